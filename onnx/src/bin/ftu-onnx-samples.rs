//! Writes the sample models of `ftu_onnx::samples` to files, for benchmarks and trying ftu-infer
//! without a trained model.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ftu_onnx::samples::{self, InputShape};

#[derive(Parser)]
#[command(name = "ftu-onnx-samples", about = "Write small ONNX models with known behaviour")]
struct Cli {
    #[command(subcommand)]
    model: Model,
    /// Where to write the model.
    #[arg(long, global = true, default_value = "model.onnx")]
    out: PathBuf,
}

#[derive(Subcommand)]
enum Model {
    /// logits = w·rgb + b per pixel (a 1×1 convolution), output `logits`.
    Linear {
        #[arg(long, value_delimiter = ',', allow_hyphen_values = true, default_values_t = [1.0, 0.0, 0.0])]
        weights: Vec<f32>,
        #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
        bias: f32,
    },
    /// A plain strided conv encoder, bilinear upsampling and a 1×1 head: compute like a small
    /// segmentation network.
    ConvNet {
        #[arg(long, default_value_t = 32)]
        width: i64,
        #[arg(long, default_value_t = 3)]
        depth: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let model = match cli.model {
        Model::Linear { weights, bias } => {
            if weights.len() != 3 {
                return Err(format!("--weights takes three numbers (r,g,b), got {weights:?}").into());
            }
            samples::pixel_linear(
                [weights[0], weights[1], weights[2]],
                bias,
                InputShape::default(),
                "logits",
            )?
        }
        Model::ConvNet { width, depth, seed } => samples::conv_net(width, depth, seed)?,
    };
    ftu_onnx::write(&model, &cli.out)?;
    eprintln!("wrote {}", cli.out.display());
    Ok(())
}
