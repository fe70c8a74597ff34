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
    pub(crate) fn rows(data: &'a mut [f32], rows: usize, cols: usize) -> Mat<'a> {
        // SAFETY: the matrix borrows `data` mutably for its whole life.
        unsafe { Self::from_raw(data.as_mut_ptr(), data.len(), rows, cols, cols) }
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
