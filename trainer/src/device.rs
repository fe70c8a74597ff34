//! `--device cpu|cuda|cuda:N`: where a network's parameters, batches, losses and optimiser state
//! live. Data loading and augmentation stay on CPU threads; checkpoints and exports are the same
//! files whatever the device. Off the CPU the layers run candle's device-generic ops.

use candle_core::Device;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("device {0:?}: expected cpu, cuda or cuda:N")]
    Unknown(String),
    #[error(
        "device {name}: {cause}. A CUDA build of ftu-train is built with `--features cuda`, \
         which needs the CUDA toolchain at build time and an NVIDIA driver at run time"
    )]
    Cuda { name: String, cause: String },
}

/// The device `name` stands for: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`. CUDA devices are
/// opened here, so a build without CUDA, or a machine without the device, fails before any work.
pub fn parse(name: &str) -> Result<Device, DeviceError> {
    let ordinal = match name {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| DeviceError::Unknown(other.to_string()))?,
    };
    Device::new_cuda(ordinal).map_err(|e| DeviceError::Cuda {
        name: name.to_string(),
        cause: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_bad_ones_say_what_is_expected() {
        assert!(parse("cpu").unwrap().is_cpu());
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "CPU"] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("expected cpu, cuda or cuda:N"), "{bad}: {e}");
        }
    }

    /// In a build without CUDA (CI's), asking for it is an error that says how to get it.
    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_build_it() {
        for name in ["cuda", "cuda:1"] {
            let e = parse(name).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains("--features cuda"), "{e}");
        }
    }

    /// Where a CUDA device is, `cuda` and `cuda:0` open it.
    #[test]
    #[ignore = "needs a CUDA device: cargo test -p ftu-trainer --features cuda -- --ignored"]
    fn cuda_opens_the_device() {
        for name in ["cuda", "cuda:0"] {
            let device = parse(name).unwrap_or_else(|e| panic!("{e}"));
            assert!(device.is_cuda(), "{name}");
        }
    }
}
