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

/// A device by name, not opened: `cpu`, `cuda` (the first CUDA device) or `cuda:N`. It shows
/// as the name it was given, so a saved config says what the user wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    /// `cuda` (`None`: device 0) or `cuda:N`.
    Cuda(Option<usize>),
}

impl std::str::FromStr for DeviceSpec {
    type Err = DeviceError;
    fn from_str(name: &str) -> Result<DeviceSpec, DeviceError> {
        match name {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(None)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .map(|n| DeviceSpec::Cuda(Some(n)))
                .ok_or_else(|| DeviceError::Unknown(other.to_string())),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(None) => f.write_str("cuda"),
            DeviceSpec::Cuda(Some(n)) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device: a build without CUDA, or a machine without the device, fails here,
    /// before any work.
    pub fn open(self) -> Result<Device, DeviceError> {
        let ordinal = match self {
            DeviceSpec::Cpu => return Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => n.unwrap_or(0),
        };
        Device::new_cuda(ordinal).map_err(|e| DeviceError::Cuda {
            name: self.to_string(),
            cause: e.to_string(),
        })
    }
}

/// The device `name` stands for, opened (see [`DeviceSpec`]).
pub fn parse(name: &str) -> Result<Device, DeviceError> {
    name.parse::<DeviceSpec>()?.open()
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
