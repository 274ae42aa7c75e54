#!/bin/bash
# TIPC (train-inference pipeline certification) for one model: train -> eval -> export ->
# Paddle Inference over a grid of settings, each step's status recorded in results_python.log.
#
#   bash test_tipc/test_train_inference_python.sh test_tipc/configs/rd4ad/train_infer_python.txt \
#        lite_train_lite_infer [OUTPUT_ROOT]
#
# Logs and artefacts go to OUTPUT_ROOT/<model_name>/<mode>/ (default OUTPUT_ROOT: test_tipc/output).
# Modes: lite_train_lite_infer | lite_train_whole_infer | whole_infer | whole_train_whole_infer.
# Config format and the meaning of each mode: test_tipc/docs/test_train_inference_python.md.
# Exit code: 0 when every step ran successfully, 1 when any failed, 2 for a bad config or usage.

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "${SCRIPT_DIR}")
source "${SCRIPT_DIR}/common_func.sh"

SECTIONS="common_params train_params eval_params export_params infer_params"
# The non-flag key each section allows; every other key must be a --flag of the section's command.
declare -A SECTION_KEYS=([common_params]="model_name python step_timeout" [train_params]="train"
                         [eval_params]="eval" [export_params]="export"
                         [infer_params]="inference reference")
# Flags the script sets itself (paths inside the output folder), so a config must not.
declare -A SCRIPT_FLAGS=([common_params]="--output_dir --model" [train_params]="--output_dir --model"
                         [eval_params]="--output_dir --model" [export_params]="--save_dir --model"
                         [infer_params]="--output_dir")
CPU_ONLY_FLAGS="--enable_mkldnn --cpu_threads"
GPU_ONLY_FLAGS="--use_tensorrt"

func_read_arguments "${BASH_SOURCE[0]}" 2,11 "$@"
# Relative paths in the config are relative to the repository root, where everything runs.
cd "${ROOT}" || die "cannot enter ${ROOT}"

# ---- read the config (common_func.sh: func_read_config) ----------------------------------------
func_read_config "${CONFIG}"

REQUIRED_KEYS="common_params:model_name common_params:python train_params:train eval_params:eval
               export_params:export infer_params:inference infer_params:reference infer_params:--device
               infer_params:--model_dir infer_params:--img_path"
for required in ${REQUIRED_KEYS}; do
    config_raw "${required%%:*}" "${required#*:}" > /dev/null \
        || die "${CONFIG}: missing '${required#*:}:' in ${required%%:*}"
done
MODEL_NAME=$(config_value common_params model_name)
[[ -n ${MODEL_NAME} ]] || die "${CONFIG}: model_name is empty"
func_python_and_timeout common_params
read -ra TRAIN_CMD <<< "$(config_value train_params train)"
read -ra EVAL_CMD <<< "$(config_value eval_params eval)"
read -ra EXPORT_CMD <<< "$(config_value export_params export)"
read -ra INFER_CMD <<< "$(config_value infer_params inference)"
read -ra REFERENCE_CMD <<< "$(config_value infer_params reference)"
[[ -z $(config_raw infer_params --model_dir) ]] \
    || die "${CONFIG}: leave --model_dir empty: the script passes the folder it exported"
IMG_PATH=$(config_value infer_params --img_path)
[[ -n ${IMG_PATH} ]] || die "${CONFIG}: --img_path in infer_params has no value for ${MODE}"
GIVEN_CHECKPOINT=$(func_pick_value "$(config_raw export_params --checkpoint_dir)" "${MODE}")
if [[ ${MODE} == whole_infer ]]; then
    [[ -n ${GIVEN_CHECKPOINT} ]] || die "${CONFIG}: whole_infer needs --checkpoint_dir:whole_infer=DIR in export_params"
    # main.py (the dygraph reference) finds a checkpoint as <output_dir>/<model>/<cls>.
    GIVEN_CHECKPOINT=${GIVEN_CHECKPOINT%/}
    [[ $(basename "$(dirname "${GIVEN_CHECKPOINT}")") == "${MODEL_NAME}" ]] \
        || die "${CONFIG}: --checkpoint_dir must be <output_dir>/${MODEL_NAME}/<cls>, as main.py writes it; got ${GIVEN_CHECKPOINT}"
    CLS=$(basename "${GIVEN_CHECKPOINT}")
else
    [[ -z ${GIVEN_CHECKPOINT} ]] || die "${CONFIG}: --checkpoint_dir in export_params is for whole_infer only (${MODE} exports what it trains)"
    CLS=$(config_value common_params --cls)
    [[ -n ${CLS} && ${CLS} != all ]] || die "${CONFIG}: --cls in common_params must name one category for ${MODE}"
fi
IFS="|" read -ra DEVICES <<< "$(config_value infer_params --device)"
[[ ${#DEVICES[@]} -gt 0 ]] || die "${CONFIG}: --device in infer_params has no value for ${MODE}"
for device in "${DEVICES[@]}"; do
    word_in "${device}" "cpu gpu" || die "${CONFIG}: --device in infer_params: expected cpu or gpu, got '${device}'"
done
collect_flags common_params ""
COMMON_FLAGS=("${FLAG_ARGS[@]}")
collect_flags train_params ""
TRAIN_FLAGS=("${FLAG_ARGS[@]}")
collect_flags eval_params ""
EVAL_FLAGS=("${FLAG_ARGS[@]}")
collect_flags export_params "--checkpoint_dir"
EXPORT_FLAGS=("${FLAG_ARGS[@]}")
collect_flags common_params "--cls --data_dir"
REFERENCE_FLAGS=("${FLAG_ARGS[@]}")

# The config is valid: only now touch the output folder.
LOG_DIR=${OUTPUT_ROOT}/${MODEL_NAME}/${MODE}
RESULTS=${LOG_DIR}/results_python.log
TRAIN_OUTPUT=${LOG_DIR}/train
EXPORT_DIR=${LOG_DIR}/inference_model
func_new_log_dir  # common_func.sh, with run_step, skip and print_summary

function has_cuda() {
    [[ $("${PYTHON[@]}" -c 'import paddle; print(paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0)' 2> /dev/null) == True ]]
}

# ---- inference grid --------------------------------------------------------------------------------
# One infer.py run per combination of the infer_params flags that list alternatives (a|b); flags
# that only concern the other device are left out (no --enable_mkldnn on gpu, no --use_tensorrt on cpu).
function run_inference_grid() {
    local i j key device ignored alternatives value combo
    for device in "${DEVICES[@]}"; do
        [[ ${device} == cpu ]] && ignored=${GPU_ONLY_FLAGS} || ignored=${CPU_ONLY_FLAGS}
        if [[ ${device} == gpu ]] && ! has_cuda; then
            skip "gpu: no CUDA device (every --device gpu inference run)"
            continue
        fi
        # combos[j] holds "--flag value --flag value ..."; names[j] the matching log name
        local combos=("") names=("infer_${device}")
        for ((i = 0; i < ${#ENTRY_KEY[@]}; i++)); do
            key=${ENTRY_KEY[i]}
            [[ ${ENTRY_SECTION[i]} == infer_params && ${key} == --* ]] || continue
            word_in "${key}" "--device --model_dir --img_path ${ignored}" && continue
            value=$(func_pick_value "${ENTRY_VALUE[i]}" "${MODE}")
            [[ -z ${value} ]] && continue
            IFS="|" read -ra alternatives <<< "${value}"
            local new_combos=() new_names=()
            for ((j = 0; j < ${#combos[@]}; j++)); do
                for value in "${alternatives[@]}"; do
                    new_combos+=("${combos[j]} ${key} ${value}")
                    if [[ ${#alternatives[@]} -gt 1 ]]; then
                        new_names+=("${names[j]}_${key#--}_${value}")
                    else
                        new_names+=("${names[j]}")
                    fi
                done
            done
            combos=("${new_combos[@]}")
            names=("${new_names[@]}")
        done
        for ((j = 0; j < ${#combos[@]}; j++)); do
            read -ra combo <<< "${combos[j]}"
            if [[ ${device} == cpu && ${combos[j]} =~ --precision\ ([a-z0-9]+) && ${BASH_REMATCH[1]} != fp32 ]]; then
                skip "${names[j]}: Paddle Inference on CPU runs fp32 only"
                continue
            fi
            run_step "${names[j]}" "${PYTHON[@]}" "${INFER_CMD[@]}" --device "${device}" "${combo[@]}" \
                --model_dir "${EXPORT_DIR}" --img_path "${IMG_PATH}" --output_dir "${LOG_DIR}/${names[j]}" \
                && GRID_PREDICTIONS+=("${LOG_DIR}/${names[j]}/df_test.csv")
        done
    done
}

# Every grid run must score the images as the dygraph model does (main.py --mode infer on the
# same checkpoint): an inference runtime can exit 0 and still return wrong numbers.
function compare_with_dygraph() {
    local reference=${CHECKPOINT}/infer/df_test.csv
    if ! run_step infer_dygraph "${PYTHON[@]}" "${REFERENCE_CMD[@]}" --model "${MODEL_NAME}" \
        "${REFERENCE_FLAGS[@]}" --cls "${CLS}" --output_dir "$(dirname "$(dirname "${CHECKPOINT}")")" \
        --img_path "${IMG_PATH}"; then
        skip "compare: the dygraph reference failed"
    elif [[ ${#GRID_PREDICTIONS[@]} -eq 0 ]]; then
        skip "compare: no inference run produced predictions"
    else
        run_step compare "${PYTHON[@]}" test_tipc/compare_predictions.py --reference "${reference}" \
            "${GRID_PREDICTIONS[@]}"
    fi
}

# ---- the pipeline ----------------------------------------------------------------------------------
echo "TIPC ${MODEL_NAME} ${MODE}: logs in ${LOG_DIR}"
GRID_PREDICTIONS=()
if [[ ${MODE} == whole_infer ]]; then
    CHECKPOINT=${GIVEN_CHECKPOINT}
    have_checkpoint=true
else
    CHECKPOINT=${TRAIN_OUTPUT}/${MODEL_NAME}/${CLS}
    have_checkpoint=false
    if run_step train "${PYTHON[@]}" "${TRAIN_CMD[@]}" --model "${MODEL_NAME}" "${COMMON_FLAGS[@]}" \
        "${TRAIN_FLAGS[@]}" --output_dir "${TRAIN_OUTPUT}"; then
        have_checkpoint=true
        run_step eval "${PYTHON[@]}" "${EVAL_CMD[@]}" --model "${MODEL_NAME}" "${COMMON_FLAGS[@]}" \
            "${EVAL_FLAGS[@]}" --output_dir "${TRAIN_OUTPUT}"
    else
        skip "eval, export and inference: training failed"
    fi
fi
if [[ ${have_checkpoint} == true ]]; then
    if run_step export "${PYTHON[@]}" "${EXPORT_CMD[@]}" --model "${MODEL_NAME}" "${EXPORT_FLAGS[@]}" \
        --checkpoint_dir "${CHECKPOINT}" --save_dir "${EXPORT_DIR}"; then
        run_inference_grid
        compare_with_dygraph
    else
        skip "inference: export failed"
    fi
fi

print_summary
