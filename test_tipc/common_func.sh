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

function die() {
    echo "error: $*" >&2
    exit 2
}

function word_in() {  # word_in WORD "LIST OF WORDS"
    local item
    for item in $2; do
        [[ $1 == "${item}" ]] && return 0
    done
    return 1
}

# func_read_config CONFIG: one entry per `key:value` line of CONFIG into ENTRY_SECTION/KEY/VALUE,
# remembered with its ===section===. The calling script sets SECTIONS (allowed sections),
# SECTION_KEYS[section] (the non-flag keys each allows; every other key must be a --flag) and
# SCRIPT_FLAGS[section] (flags the script sets itself, so a config must not).
function func_read_config() {
    local config=$1 line line_number section where key value i
    ENTRY_SECTION=()
    ENTRY_KEY=()
    ENTRY_VALUE=()
    section=""
    line_number=0
    while IFS= read -r line || [[ -n ${line} ]]; do
        line_number=$((line_number + 1))
        line=${line%$'\r'}
        [[ -z ${line//[[:space:]]/} || ${line} == \#* ]] && continue
        where="${config}:${line_number}"
        if [[ ${line} =~ ^=+([a-z_]+)=+$ ]]; then
            section=${BASH_REMATCH[1]}
            word_in "${section}" "${SECTIONS}" || die "${where}: unknown section ${section} (expected one of: ${SECTIONS})"
            continue
        fi
        [[ -n ${section} ]] || die "${where}: key before the first ===section=== line"
        [[ ${line} == *:* ]] || die "${where}: expected key:value, got '${line}'"
        key=$(func_parser_key "${line}")
        value=$(func_parser_value "${line}")
        if [[ ${key} != --* ]]; then
            word_in "${key}" "${SECTION_KEYS[${section}]}" \
                || die "${where}: unknown key '${key}' in ${section} (allowed: ${SECTION_KEYS[${section}]} and --flags)"
        fi
        word_in "${key}" "${SCRIPT_FLAGS[${section}]}" && die "${where}: ${key} is set by the script; remove it"
        for ((i = 0; i < ${#ENTRY_KEY[@]}; i++)); do
            [[ ${ENTRY_SECTION[i]} == "${section}" && ${ENTRY_KEY[i]} == "${key}" ]] \
                && die "${where}: ${key} appears twice in ${section}"
        done
        ENTRY_SECTION+=("${section}")
        ENTRY_KEY+=("${key}")
        ENTRY_VALUE+=("${value}")
    done < "${config}"
}

# The raw value of KEY in SECTION; returns 1 when absent.
function config_raw() {
    local i
    for ((i = 0; i < ${#ENTRY_KEY[@]}; i++)); do
        if [[ ${ENTRY_SECTION[i]} == "$1" && ${ENTRY_KEY[i]} == "$2" ]]; then
            echo "${ENTRY_VALUE[i]}"
            return 0
        fi
    done
    return 1
}

# The value of KEY in SECTION for the current mode (REQUIRED_KEYS are checked up front, so a
# missing key cannot go unnoticed inside a $(...) subshell).
function config_value() {
    func_pick_value "$(config_raw "$1" "$2")" "${MODE}"
}

# FLAG_ARGS=(--flag value ...) for every --flag of SECTION that has a value in this mode,
# except those named in SKIP. Outside the inference grid a flag takes a single value.
function collect_flags() {
    local section=$1 skip=$2 i value
    FLAG_ARGS=()
    for ((i = 0; i < ${#ENTRY_KEY[@]}; i++)); do
        [[ ${ENTRY_SECTION[i]} == "${section}" && ${ENTRY_KEY[i]} == --* ]] || continue
        word_in "${ENTRY_KEY[i]}" "${skip}" && continue
        value=$(func_pick_value "${ENTRY_VALUE[i]}" "${MODE}")
        [[ -z ${value} ]] && continue
        [[ ${value} == *"|"* ]] && die "${CONFIG}: ${ENTRY_KEY[i]} in ${section} takes one value per mode, got '${value}'"
        FLAG_ARGS+=("${ENTRY_KEY[i]}" "${value}")
    done
}


# ---- running and recording steps: the calling script sets LOG_DIR, RESULTS and STEP_TIMEOUT, then
# calls func_new_log_dir ------------------------------------------------------------------------
# A fresh LOG_DIR (the previous run's removed) and no steps recorded yet.
function func_new_log_dir() {
    rm -rf "${LOG_DIR}"
    mkdir -p "${LOG_DIR}"
    STEP_NAMES=()
    STEP_STATUS=()
    STEP_SECONDS=()
    FAILED=0
}

function now_ms() {
    echo $(($(date +%s%N) / 1000000))
}

# run_step NAME COMMAND...: output to LOG_DIR/NAME.log, status line to the results log.
function run_step() {
    local name=$1 start rc status=ok
    shift
    local log=${LOG_DIR}/${name}.log
    start=$(now_ms)
    if [[ -n ${STEP_TIMEOUT} ]]; then
        timeout --kill-after=10 "${STEP_TIMEOUT}" "$@" > "${log}" 2>&1
    else
        "$@" > "${log}" 2>&1
    fi
    rc=$?
    if [[ -n ${STEP_TIMEOUT} ]] && [[ ${rc} -eq 124 || ${rc} -eq 137 ]]; then
        echo "tipc: stopped after the step_timeout of ${STEP_TIMEOUT} s" >> "${log}"
        status=TIMEOUT
    elif [[ ${rc} -ne 0 ]]; then
        status=FAILED
    fi
    status_check "${rc}" "$(printf '%q ' "$@")> ${log} 2>&1" "${RESULTS}"
    STEP_NAMES+=("${name}")
    STEP_STATUS+=("${status}")
    STEP_SECONDS+=("$(awk -v ms=$(($(now_ms) - start)) 'BEGIN { printf "%.1f", ms / 1000 }')")
    [[ ${rc} -eq 0 ]] || FAILED=$((FAILED + 1))
    return "${rc}"
}

function skip() {
    echo "skip $*" | tee -a "${RESULTS}"
}

# The table of every step's status and seconds; exit code 1 when any failed.
function print_summary() {
    local i
    echo
    echo "summary (${MODEL_NAME} ${MODE}):"
    for ((i = 0; i < ${#STEP_NAMES[@]}; i++)); do
        printf "  %-7s %7ss  %s\n" "${STEP_STATUS[i]}" "${STEP_SECONDS[i]}" "${STEP_NAMES[i]}"
    done
    echo "  ${#STEP_NAMES[@]} steps run, ${FAILED} failed; results: ${RESULTS}"
    [[ ${FAILED} -eq 0 ]] || exit 1
}

# func_read_arguments SCRIPT HELP_LINES "$@": -h prints the script's header comment (lines
# HELP_LINES, e.g. 2,11); otherwise sets CONFIG (absolute), MODE and OUTPUT_ROOT (absolute, default
# test_tipc/output under the repository root) or stops with the usage line.
function func_read_arguments() {
    local script=$1 help_lines=$2
    shift 2
    if [[ $# -eq 1 && ( $1 == -h || $1 == --help ) ]]; then
        sed -n "${help_lines}s/^# \\{0,1\\}//p" "${script}"
        exit 0
    fi
    if [[ $# -lt 2 || $# -gt 3 ]]; then
        die "usage: bash test_tipc/$(basename "${script}") CONFIG MODE [OUTPUT_ROOT] (MODE: ${TIPC_MODES// / | })"
    fi
    CONFIG=$1
    MODE=$2
    OUTPUT_ROOT=${3:-test_tipc/output}  # the default is relative to the repository root
    [[ $# -eq 3 && ${OUTPUT_ROOT} != /* ]] && OUTPUT_ROOT=${PWD}/${OUTPUT_ROOT}
    [[ -f ${CONFIG} ]] || die "${CONFIG}: config file not found"
    func_is_mode "${MODE}" || die "mode ${MODE}: unknown (choose ${TIPC_MODES// / | })"
    CONFIG=$(cd "$(dirname "${CONFIG}")" && pwd)/$(basename "${CONFIG}")
}

# func_python_and_timeout SECTION: PYTHON (the interpreter command, an array) and STEP_TIMEOUT
# (seconds any one step may take in this mode; empty: no limit, so a hung step becomes a
# failure otherwise) from SECTION's python: and step_timeout: keys.
function func_python_and_timeout() {
    local section=$1
    read -ra PYTHON <<< "$(config_value "${section}" python)"
    [[ ${#PYTHON[@]} -gt 0 ]] || die "${CONFIG}: python is empty"
    command -v "${PYTHON[0]}" > /dev/null || die "${CONFIG}: python '${PYTHON[0]}' not found on PATH"
    STEP_TIMEOUT=$(config_value "${section}" step_timeout)
    [[ -z ${STEP_TIMEOUT} || ${STEP_TIMEOUT} =~ ^[1-9][0-9]*$ ]] \
        || die "${CONFIG}: step_timeout must be a whole number of seconds, got '${STEP_TIMEOUT}'"
}
