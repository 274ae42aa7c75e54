#!/bin/bash
# TIPC serving pipeline for one model: serve the model that test_train_inference_python.sh
# exported with serve.py, post the images to it, check every score against infer.py's on the
# same export, check bad requests are refused meanwhile, then stop the server with SIGTERM.
#
#   bash test_tipc/test_train_inference_python.sh test_tipc/configs/rd4ad/train_infer_python.txt lite_train_lite_infer
#   bash test_tipc/test_serving_infer_python.sh test_tipc/configs/rd4ad/serving_infer_python.txt lite_train_lite_infer
#
# The model: --model_dir of the config for the mode, else OUTPUT_ROOT/<model>/<mode>/inference_model
# (what the train pipeline wrote; run it first with the same OUTPUT_ROOT, default test_tipc/output).
# Logs: OUTPUT_ROOT/<model>/<mode>_serving/ with results_serving.log. Exit code: 0 when every
# step ran successfully, 1 when any failed, 2 for a bad config or usage.

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "${SCRIPT_DIR}")
source "${SCRIPT_DIR}/common_func.sh"

SECTIONS="serving_params client_params"
declare -A SECTION_KEYS=([serving_params]="model_name python step_timeout serving" [client_params]="client")
declare -A SCRIPT_FLAGS=([serving_params]="--port --host" [client_params]="--url --output")

func_read_arguments "${BASH_SOURCE[0]}" 2,13 "$@"
cd "${ROOT}" || die "cannot enter ${ROOT}"
func_read_config "${CONFIG}"

for required in serving_params:model_name serving_params:python serving_params:serving \
                client_params:client client_params:--img_path; do
    config_raw "${required%%:*}" "${required#*:}" > /dev/null \
        || die "${CONFIG}: missing '${required#*:}:' in ${required%%:*}"
done
MODEL_NAME=$(config_value serving_params model_name)
func_python_and_timeout serving_params
read -ra SERVE_CMD <<< "$(config_value serving_params serving)"
read -ra CLIENT_CMD <<< "$(config_value client_params client)"
IMG_PATH=$(config_value client_params --img_path)
[[ -n ${IMG_PATH} ]] || die "${CONFIG}: --img_path in client_params has no value for ${MODE}"
MODEL_DIR=$(config_value serving_params --model_dir)
MODEL_DIR=${MODEL_DIR:-${OUTPUT_ROOT}/${MODEL_NAME}/${MODE}/inference_model}
[[ -d ${MODEL_DIR} ]] || die "${MODEL_DIR}: no exported model; run test_tipc/test_train_inference_python.sh \
test_tipc/configs/${MODEL_NAME}/train_infer_python.txt ${MODE} first (same OUTPUT_ROOT), or set --model_dir for ${MODE}"
collect_flags serving_params "--model_dir"
SERVE_FLAGS=("${FLAG_ARGS[@]}")
collect_flags client_params "--img_path"
CLIENT_FLAGS=("${FLAG_ARGS[@]}")
# infer.py's reference runs on the engine settings the server uses
INFER_FLAGS=()
for ((i = 0; i < ${#SERVE_FLAGS[@]}; i += 2)); do
    word_in "${SERVE_FLAGS[i]}" "--device --cpu_threads --enable_mkldnn --backend --gpu_id" \
        && INFER_FLAGS+=("${SERVE_FLAGS[i]}" "${SERVE_FLAGS[i + 1]}")
done

LOG_DIR=${OUTPUT_ROOT}/${MODEL_NAME}/${MODE}_serving
RESULTS=${LOG_DIR}/results_serving.log
func_new_log_dir
PORT=$("${PYTHON[@]}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:${PORT}

echo "TIPC serving ${MODEL_NAME} ${MODE}: logs in ${LOG_DIR}"
SERVER_PID=""
trap '[[ -n ${SERVER_PID} ]] && kill -TERM ${SERVER_PID} 2> /dev/null' EXIT
if run_step infer_reference "${PYTHON[@]}" infer.py --model_dir "${MODEL_DIR}" --img_path "${IMG_PATH}" \
    "${INFER_FLAGS[@]}" --output_dir "${LOG_DIR}/infer"; then
    "${PYTHON[@]}" "${SERVE_CMD[@]}" --model_dir "${MODEL_DIR}" --host 127.0.0.1 --port "${PORT}" \
        "${SERVE_FLAGS[@]}" > "${LOG_DIR}/serve.log" 2>&1 &
    SERVER_PID=$!
    status_check 0 "$(printf '%q ' "${PYTHON[@]}" "${SERVE_CMD[@]}" --model_dir "${MODEL_DIR}" --port "${PORT}" \
        "${SERVE_FLAGS[@]}")> ${LOG_DIR}/serve.log 2>&1 &" "${RESULTS}"
    if run_step client "${PYTHON[@]}" "${CLIENT_CMD[@]}" --url "${URL}" --img_path "${IMG_PATH}" \
        "${CLIENT_FLAGS[@]}" --output "${LOG_DIR}/client/df_test.csv"; then
        run_step compare "${PYTHON[@]}" test_tipc/compare_predictions.py \
            --reference "${LOG_DIR}/infer/df_test.csv" "${LOG_DIR}/client/df_test.csv"
    else
        skip "compare: the client step failed"
    fi
    # SIGTERM: the server finishes what is in flight and exits 0
    run_step stop bash -c "kill -TERM ${SERVER_PID} && timeout 60 tail --pid=${SERVER_PID} -f /dev/null"
    wait "${SERVER_PID}"
    server_rc=$?
    SERVER_PID=""
    echo "serve.py exit code ${server_rc}" >> "${LOG_DIR}/stop.log"
    if [[ ${server_rc} -ne 0 ]]; then
        FAILED=$((FAILED + 1))
        STEP_STATUS[${#STEP_STATUS[@]} - 1]=FAILED
        status_check 1 "serve.py exited ${server_rc} after SIGTERM (see ${LOG_DIR}/serve.log)" "${RESULTS}"
    fi
else
    skip "serving: infer.py's reference run failed"
fi

print_summary
