"""The ground floor: what every other part of adkit stands on, importing nothing of adkit
above it. Errors users see (errors), files written atomically (io_utils), reading images and
the one preprocessing step (image_io), process set-up: threads, devices, seeds, quiet
libraries (runtime), the Paddle 2.6 / 3.x differences (compat), several processes
(distributed) and progress bars and log lines (progress)."""
