//! Small dense linear algebra on the host in f64 (rank-sized matrices: PiSSA's and the patch
//! codec's `r x r` problems), `no_std` (square roots from `libm`, which rounds them correctly,
//! like std's).

use alloc::vec;
use alloc::vec::Vec;

/// `√x`, also where there is no `std`.
pub fn sqrt(x: f64) -> f64 {
    libm::sqrt(x)
}

/// Eigenvalues and eigenvectors (columns of the row-major result) of a symmetric `k x k`
/// matrix, by cyclic Jacobi rotations.
pub fn symmetric_eigen(mut a: Vec<f64>, k: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0f64; k * k];
    (0..k).for_each(|i| v[i * k + i] = 1.0);
    for _ in 0..100 {
        let off: f64 = (0..k)
            .flat_map(|i| (0..k).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * k + j] * a[i * k + j])
            .sum();
        let scale: f64 = (0..k).map(|i| a[i * k + i] * a[i * k + i]).sum();
        if off <= 1e-30 * scale.max(1e-300) {
            break;
        }
        for p in 0..k {
            for q in p + 1..k {
                let apq = a[p * k + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * k + q] - a[p * k + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + sqrt(theta * theta + 1.0));
                let t = if theta == 0.0 { 1.0 } else { t };
                let (c, s) = (1.0 / sqrt(t * t + 1.0), t / sqrt(t * t + 1.0));
                for i in 0..k {
                    let (aip, aiq) = (a[i * k + p], a[i * k + q]);
                    a[i * k + p] = c * aip - s * aiq;
                    a[i * k + q] = s * aip + c * aiq;
                }
                for i in 0..k {
                    let (api, aqi) = (a[p * k + i], a[q * k + i]);
                    a[p * k + i] = c * api - s * aqi;
                    a[q * k + i] = s * api + c * aqi;
                }
                for i in 0..k {
                    let (vip, viq) = (v[i * k + p], v[i * k + q]);
                    v[i * k + p] = c * vip - s * viq;
                    v[i * k + q] = s * vip + c * viq;
                }
            }
        }
    }
    ((0..k).map(|i| a[i * k + i]).collect(), v)
}
