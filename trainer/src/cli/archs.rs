//! `ftu-train archs`: every architecture `--arch` takes, the decoders' default widths, and which
//! pretrained encoder files fit each encoder.

use ftu_models::decoders::DecoderKind;
use ftu_models::encoders::EncoderKind;
use ftu_models::Arch;

/// Where an encoder's pretrained `model.safetensors` comes from (a Hugging Face Hub repository).
pub fn pretrained_source(encoder: EncoderKind) -> String {
    match encoder {
        EncoderKind::ResNet(depth) => format!("timm/resnet{depth}.a1_in1k (timm names)"),
        EncoderKind::EfficientNet(b) => format!("timm/efficientnet_b{b}.* (timm's efficientnet_b{b} layout)"),
        EncoderKind::Mit(b) => format!("nvidia/mit-b{b} (Hugging Face SegFormer names)"),
        EncoderKind::ConvNext(_) => format!("timm/{}.fb_in22k_ft_in1k (timm names)", encoder.name()),
        EncoderKind::EfficientNetV2(_) => {
            let size = encoder.name().trim_start_matches("efficientnetv2_").to_string();
            format!("timm/tf_efficientnetv2_{size}.in21k_ft_in1k (timm's tf_efficientnetv2_{size} layout)")
        }
        EncoderKind::Swin(_) => format!("timm/{}_224.ms_in22k_ft_in1k (timm names)", encoder.name()),
    }
}

/// The listing `ftu-train archs` prints.
pub fn listing() -> String {
    let mut s = String::from("decoders (--arch DECODER-ENCODER; --decoder-channels, default widths):\n");
    for d in DecoderKind::all() {
        let widths: Vec<String> = d.default_channels().iter().map(|c| c.to_string()).collect();
        s.push_str(&format!("  {:<10} {}\n", d.name(), widths.join(",")));
    }
    s.push_str("\nencoders, and the pretrained model.safetensors --pretrained takes:\n");
    for e in EncoderKind::all() {
        s.push_str(&format!("  {:<25} {}\n", e.name(), pretrained_source(e)));
    }
    let all = Arch::all();
    s.push_str(&format!(
        "\n{} architectures: every decoder with every encoder, e.g. {}, {}, {}\n",
        all.len(),
        all[1],
        all[all.len() - 1],
        "segformer-mit_b2"
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_encoder_and_decoder_is_listed_and_parses_back() {
        let text = listing();
        for e in EncoderKind::all() {
            assert!(text.contains(&format!("  {:<16} ", e.name())), "{}", e.name());
        }
        for d in DecoderKind::all() {
            assert!(text.contains(&format!("  {:<10} ", d.name())), "{}", d.name());
        }
        assert!(text.contains(&format!("{} architectures", Arch::all().len())));
        assert!("segformer-mit_b2".parse::<Arch>().is_ok());
    }
}
