//! Matrix products on strided views through the `gemm` crate, bounds checked before the call.

/// A read-only matrix view: `rows × cols`, entry (r, c) at `r·rs + c·cs`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `rows × cols` matrix.
    pub(crate) fn rows(data: &'a [f32], rows: usize, cols: usize) -> MatRef<'a> {
        Self::strided(data, rows, cols, cols)
    }

    /// A row-major `rows × cols` matrix whose rows start `stride` values apart.
    pub(crate) fn strided(data: &'a [f32], rows: usize, cols: usize, stride: usize) -> MatRef<'a> {
        MatRef {
            data,
            rows,
            cols,
            rs: stride,
            cs: 1,
        }
    }

    /// The transpose, without moving anything.
    pub(crate) fn t(self) -> MatRef<'a> {
        MatRef {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Columns `c0..c1`, without moving anything.
    fn columns(self, c0: usize, c1: usize) -> MatRef<'a> {
        let start = (c0 * self.cs).min(self.data.len());
        MatRef {
            data: &self.data[start..],
            cols: c1 - c0,
            ..self
        }
    }

    /// Rows `r0..r1`, without moving anything.
    fn row_range(self, r0: usize, r1: usize) -> MatRef<'a> {
        self.t().columns(r0, r1).t()
    }

    fn fits(&self) -> bool {
        self.rows == 0 || self.cols == 0 || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// A row-major destination matrix whose rows start `stride` values apart. It holds a pointer
/// rather than a slice so that tasks can write interleaved matrices of one buffer (the bands of
/// a convolution's output: the same rows, different columns) without overlapping `&mut` slices.
pub(crate) struct Mat<'a> {
    ptr: *mut f32,
    /// Values reachable from `ptr`.
    len: usize,
    rows: usize,
    cols: usize,
    stride: usize,
    _data: std::marker::PhantomData<&'a mut [f32]>,
}

impl<'a> Mat<'a> {
    /// The same matrix, borrowed for one product.
    pub(crate) fn reborrow(&mut self) -> Mat<'_> {
        Mat {
            ptr: self.ptr,
            _data: std::marker::PhantomData,
            ..*self
        }
    }

    pub(crate) fn rows(data: &'a mut [f32], rows: usize, cols: usize) -> Mat<'a> {
        // SAFETY: the matrix borrows `data` mutably for its whole life.
        unsafe { Self::from_raw(data.as_mut_ptr(), data.len(), rows, cols, cols) }
    }

    /// The `rows × cols` matrix at the start of `data`, rows `stride` apart (a head's columns of
    /// a wider matrix).
    pub(crate) fn strided(data: &'a mut [f32], rows: usize, cols: usize, stride: usize) -> Mat<'a> {
        assert!(
            rows == 0 || cols == 0 || (rows - 1) * stride + cols <= data.len(),
            "matmul: a {rows}×{cols} destination, rows {stride} apart, past its {} values",
            data.len()
        );
        // SAFETY: the matrix borrows `data` mutably for its whole life and stays within it.
        unsafe { Self::from_raw(data.as_mut_ptr(), data.len(), rows, cols, stride) }
    }

    /// The matrix at `ptr`, which reaches `len` values.
    ///
    /// # Safety
    /// The `len` values must stay valid while the matrix lives, and nothing else may read or
    /// write the entries the matrix covers (row `r`, column `c < cols` at `r·stride + c`)
    /// meanwhile; entries between them may belong to other matrices.
    pub(crate) unsafe fn from_raw(ptr: *mut f32, len: usize, rows: usize, cols: usize, stride: usize) -> Mat<'a> {
        Mat {
            ptr,
            len,
            rows,
            cols,
            stride,
            _data: std::marker::PhantomData,
        }
    }
}

/// `dst = lhs · rhs`, or `dst += lhs · rhs` when `accumulate`; split over the rayon pool when
/// `parallel` and large.
pub(crate) fn matmul(dst: Mat, accumulate: bool, lhs: MatRef, rhs: MatRef, parallel: bool) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert!(
        rhs.rows == k && dst.rows == m && dst.cols == n && dst.stride >= n,
        "matmul: {m}×{k} · {}×{n} into {}×{} (row stride {})",
        rhs.rows,
        dst.rows,
        dst.cols,
        dst.stride
    );
    let dst_fits = m == 0 || n == 0 || (m - 1) * dst.stride + n <= dst.len;
    assert!(
        lhs.fits() && rhs.fits() && dst_fits,
        "matmul: a view reaches past its data"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for row in 0..m {
                // SAFETY: within the `len` values checked above, and the matrix's own entries.
                unsafe { std::slice::from_raw_parts_mut(dst.ptr.add(row * dst.stride), n).fill(0.0) };
            }
        }
        return;
    }
    let threads = rayon::current_num_threads();
    let parallelism = if parallel && threads > 1 && m * n * k >= 1 << 18 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every view was checked to lie within its data above; `dst`'s entries belong to
    // it alone (its constructors' contract), so they overlap neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr,
            1,
            dst.stride as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `dst = lhs · rhs` (row-major, `lhs.rows × rhs.cols`) for an inner dimension long against the
/// result, as a weight's gradient over every pixel of a batch is: `gemm` splits a product over
/// the result's blocks, which such a result has too few of to keep the threads busy. Here the
/// inner dimension is cut into one share per thread, each share's product goes into its own
/// matrix and the shares are added in order (so the result does not depend on scheduling).
/// Other shapes take [`matmul`] in parallel.
pub(crate) fn matmul_long_inner(dst: &mut [f32], lhs: MatRef, rhs: MatRef) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert!(
        rhs.rows == k && dst.len() == m * n,
        "matmul: {m}×{k} · {}×{n} into {} values",
        rhs.rows,
        dst.len()
    );
    let shares = rayon::current_num_threads().min(k / 256).max(1);
    if shares == 1 || k < 2 * (m + n) {
        matmul(Mat::rows(dst, m, n), false, lhs, rhs, true);
        return;
    }
    use rayon::prelude::*;
    let partial: Vec<Vec<f32>> = (0..shares)
        .into_par_iter()
        .map(|t| {
            let (k0, k1) = (t * k / shares, (t + 1) * k / shares);
            let mut p = vec![0f32; m * n];
            matmul(
                Mat::rows(&mut p, m, n),
                false,
                lhs.columns(k0, k1),
                rhs.row_range(k0, k1),
                false,
            );
            p
        })
        .collect();
    dst.copy_from_slice(&partial[0]);
    for p in &partial[1..] {
        dst.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
}
