#!/bin/bash
# Helpers shared by the TIPC scripts: reading `key:value` config lines, choosing a value for
# the current mode, and recording each command's outcome in the results log.

TIPC_MODES="lite_train_lite_infer lite_train_whole_infer whole_infer whole_train_whole_infer"

# The key of a `key:value` line: everything before the first ':'.
function func_parser_key() {
    local line=$1
    echo "${line%%:*}"
}

# The value of a `key:value` line: everything after the first ':' (so values may hold ':').
function func_parser_value() {
    local line=$1
    if [[ ${line} != *:* ]]; then
        echo ""
        return
    fi
    echo "${line#*:}"
}

function func_is_mode() {
    local word
    for word in ${TIPC_MODES}; do
        [[ $1 == "${word}" ]] && return 0
    done
    return 1
}

# A value is either per-mode (`mode_a=x|mode_b=y`: every item starts with a mode name and '=')
# or a plain value that applies to every mode (possibly a `a|b` list of alternatives).
function func_is_per_mode() {
    local value=$1 item items
    [[ -z ${value} ]] && return 1
    IFS="|" read -ra items <<< "${value}"
    for item in "${items[@]}"; do
        [[ ${item} == *=* ]] && func_is_mode "${item%%=*}" || return 1
    done
    return 0
}

# The value that applies to MODE: the item for MODE of a per-mode value (empty when MODE is not
# listed), or the whole plain value. `null` means "not set" and comes back empty.
function func_pick_value() {
    local value=$1 mode=$2 item items picked=""
    if func_is_per_mode "${value}"; then
        IFS="|" read -ra items <<< "${value}"
        for item in "${items[@]}"; do
            if [[ ${item%%=*} == "${mode}" ]]; then
                picked=${item#*=}
                break
            fi
        done
    else
        picked=${value}
    fi
    [[ ${picked} == "null" ]] && picked=""
    echo "${picked}"
}

# Append the TIPC status line for one command to the results log (and show it).
function status_check() {
    local last_status=$1 run_command=$2 run_log=$3
    if [[ ${last_status} -eq 0 ]]; then
        echo "Run successfully with command - ${run_command}" | tee -a "${run_log}"
    else
        echo "Run failed with command - ${run_command}" | tee -a "${run_log}"
    fi
}
