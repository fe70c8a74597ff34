//! Resizing slides and probability maps with fast_image_resize (SIMD, multi-threaded): area
//! averaging when shrinking, as OpenCV's INTER_AREA; bilinear with pixel-centre alignment when
//! enlarging, as INTER_LINEAR.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use crate::slide::RgbImage;

fn algorithm(src: (usize, usize), dst: (usize, usize)) -> ResizeAlg {
    let shrinks = dst.0 <= src.0 && dst.1 <= src.1;
    let grows = dst.0 >= src.0 && dst.1 >= src.1;
    if shrinks {
        ResizeAlg::Convolution(FilterType::Box)
    } else if grows {
        ResizeAlg::Interpolation(FilterType::Bilinear)
    } else {
        ResizeAlg::Convolution(FilterType::Bilinear)
    }
}

/// Resizes pixel data of one type; sizes come from validated images, so a failure is a bug here.
fn resize_bytes(src: &[u8], sw: usize, sh: usize, dst: &mut [u8], dw: usize, dh: usize, pixel: PixelType) {
    let src_img = ImageRef::new(sw as u32, sh as u32, src, pixel).expect("source buffer matches its size");
    let mut dst_img = Image::from_slice_u8(dw as u32, dh as u32, dst, pixel).expect("target buffer matches its size");
    let options = ResizeOptions::new().resize_alg(algorithm((sw, sh), (dw, dh)));
    Resizer::new()
        .resize(&src_img, &mut dst_img, &options)
        .expect("same pixel types, non-empty images");
}

/// The slide at `width × height`.
pub fn resize_rgb(src: &RgbImage, width: usize, height: usize) -> RgbImage {
    if (src.width, src.height) == (width, height) {
        return src.clone();
    }
    let mut out = RgbImage::new(width, height);
    resize_bytes(
        &src.data,
        src.width,
        src.height,
        &mut out.data,
        width,
        height,
        PixelType::U8x3,
    );
    out
}

/// A single-channel float map (row-major `sw × sh`) at `dw × dh`.
pub fn resize_map(src: &[f32], sw: usize, sh: usize, dw: usize, dh: usize) -> Vec<f32> {
    assert_eq!(src.len(), sw * sh, "map of {sw}×{sh}");
    if (sw, sh) == (dw, dh) {
        return src.to_vec();
    }
    let mut out = vec![0f32; dw * dh];
    resize_bytes(
        bytemuck::cast_slice(src),
        sw,
        sh,
        bytemuck::cast_slice_mut(&mut out),
        dw,
        dh,
        PixelType::F32,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_images_stay_constant_both_ways() {
        let mut img = RgbImage::new(30, 20);
        img.data
            .chunks_exact_mut(3)
            .for_each(|p| p.copy_from_slice(&[10, 200, 77]));
        for (w, h) in [(7, 5), (64, 64), (30, 20), (45, 10)] {
            let r = resize_rgb(&img, w, h);
            assert_eq!((r.width, r.height), (w, h));
            assert!(r.data.chunks_exact(3).all(|p| p == [10, 200, 77]), "{w}×{h}");
        }
        let map = vec![0.25f32; 12 * 9];
        for (w, h) in [(3, 3), (100, 80), (12, 9)] {
            let r = resize_map(&map, 12, 9, w, h);
            assert_eq!(r.len(), w * h);
            assert!(r.iter().all(|v| (v - 0.25).abs() < 1e-6), "{w}×{h}");
        }
    }

    #[test]
    fn shrinking_by_two_averages_blocks_like_inter_area() {
        // 4×2 map: [0 2 4 6; 8 10 12 14] → 2×1: [(0+2+8+10)/4, (4+6+12+14)/4]
        let map: Vec<f32> = (0..8).map(|i| 2.0 * i as f32).collect();
        let r = resize_map(&map, 4, 2, 2, 1);
        assert!((r[0] - 5.0).abs() < 1e-5 && (r[1] - 9.0).abs() < 1e-5, "{r:?}");
    }

    #[test]
    fn enlarging_interpolates_between_pixel_centres() {
        // [0, 1] to 4 wide: centres at 0.25, 0.75 → values 0, 0.25, 0.75, 1 (clamped at the ends)
        let r = resize_map(&[0.0, 1.0], 2, 1, 4, 1);
        let want = [0.0, 0.25, 0.75, 1.0];
        assert!(r.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5), "{r:?}");
    }
}
