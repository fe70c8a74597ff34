//! Normalisation planes: an input image as three normalised float planes in a model's channel
//! order, shared by the models that normalise alike.

use ftu_formats::manifest::{ChannelOrder, Normalisation};
use ftu_formats::slide::RgbImage;

/// How a model wants its input: models that agree share their planes.
pub(super) type PlaneKey = (Normalisation, ChannelOrder);

/// An input image as three normalised float planes in a model's channel order.
pub(super) struct Planes {
    pub(super) height: usize,
    pub(super) width: usize,
    pub(super) planes: [Vec<f32>; 3],
}

pub(super) fn planes(image: &RgbImage, norm: Normalisation, channels: ChannelOrder) -> Planes {
    Planes {
        height: image.height,
        width: image.width,
        planes: normalised(image, norm, channels),
    }
}

/// The image as three normalised float planes in the model's channel order, in one pass.
pub(super) fn normalised(image: &RgbImage, norm: Normalisation, channels: ChannelOrder) -> [Vec<f32>; 3] {
    let n = image.width * image.height;
    let src = match channels {
        ChannelOrder::Rgb => [0, 1, 2],
        ChannelOrder::Bgr => [2, 1, 0],
    };
    // Per channel, a table of the 256 byte values (the same arithmetic as per pixel).
    let tables: [[f32; 256]; 3] = std::array::from_fn(|c| {
        let (mean, inv_std) = (norm.mean[c], 1.0 / norm.std[c]);
        std::array::from_fn(|v| (v as f32 - mean) * inv_std)
    });
    let mut planes: [Vec<f32>; 3] = std::array::from_fn(|_| vec![0f32; n]);
    let [p0, p1, p2] = &mut planes;
    for (((px, a), b), c) in image.data.chunks_exact(3).zip(p0).zip(p1).zip(p2) {
        *a = tables[0][px[src[0]] as usize];
        *b = tables[1][px[src[1]] as usize];
        *c = tables[2][px[src[2]] as usize];
    }
    planes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planes_normalise_in_the_models_channel_order() {
        let mut img = RgbImage::new(2, 1);
        img.data.copy_from_slice(&[10, 20, 30, 40, 50, 60]);
        let norm = Normalisation {
            mean: [1.0, 2.0, 3.0],
            std: [1.0, 2.0, 4.0],
        };
        let rgb = normalised(&img, norm, ChannelOrder::Rgb);
        assert_eq!(rgb, [vec![9.0, 39.0], vec![9.0, 24.0], vec![6.75, 14.25]]);
        let bgr = normalised(&img, norm, ChannelOrder::Bgr);
        assert_eq!(bgr, [vec![29.0, 59.0], vec![9.0, 24.0], vec![1.75, 9.25]]);
    }
}
