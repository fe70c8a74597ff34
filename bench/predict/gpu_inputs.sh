# Sourced by scripts/gpu-infer-bins.sh and scripts/gpu-infer-check.sh: the inputs of the inference
# GPU check, made by ftu-train from seeds alone, so the GPU machine makes the same files from the
# shipped binary instead of receiving about 110 MB of ONNX and 200 MB of slides.
#
#   make_gpu_inputs FTU_TRAIN DIR SLIDES SIZE
#
# DIR/data: SLIDES generated 3000² test slides (plain TIFF, which tifffile reads without
# imagecodecs). DIR/models: untrained exports of two architectures, each in float32 and with
# --fp16 (four seeds, so four different models). Three manifests, flips TTA, one group of SIZE²:
# f32.toml (the two float32 models), f16.toml (the two float16 ones) and mixed.toml (all four).
make_gpu_inputs() {
  local train=$1 dir=$2 slides=$3 size=$4
  rm -rf "$dir" && mkdir -p "$dir/models"
  "$train" synth --out "$dir/data" --train 0 --test "$slides" --size 3000 --seed 7 >/dev/null
  "$train" export --arch unet-resnet18 --seed 1 --out "$dir/models/unet32.onnx" >/dev/null
  "$train" export --arch segformer-mit_b0 --seed 2 --out "$dir/models/segformer32.onnx" >/dev/null
  "$train" export --arch unet-resnet18 --seed 3 --fp16 --out "$dir/models/unet16.onnx" >/dev/null
  "$train" export --arch segformer-mit_b0 --seed 4 --fp16 --out "$dir/models/segformer16.onnx" >/dev/null
  local name models
  for name in f32 f16 mixed; do
    case $name in
      f32) models="unet32 segformer32" ;;
      f16) models="unet16 segformer16" ;;
      mixed) models="unet32 segformer32 unet16 segformer16" ;;
    esac
    {
      printf '[tta]\nmode = "flips"\n\n[thresholds]\ndefault = 0.5\n\n[[group]]\nsize = %s\n' "$size"
      for m in $models; do
        printf '\n[[group.model]]\npath = "models/%s.onnx"\nnorm = "imagenet"\n' "$m"
      done
    } >"$dir/$name.toml"
  done
}
