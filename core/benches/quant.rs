//! Quantized matmul throughput on SmolLM2-135M's shapes: one token (decode, a matvec) and 128
//! tokens (prefill) per format, with the plain f32 matrix of the same shape as the peer.
//!
//! `cargo bench --bench quant -- [FORMAT...] [--threads N] [--tokens 1,128] [--reference]
//! [--transposed]`; formats by ggml name (`Q4_1`, `Q6_K`, ...), default all. Threads default
//! to one and then every core. `--reference` adds a row for the portable scalar kernels after
//! each SIMD one. `--transposed` times the product with `Wᵀ` (training's backward) instead.

use std::hint::black_box;
use std::time::{Duration, Instant};

use adaptkit::parallel::Threads;
use adaptkit::quant::{GgmlType, QuantMatrix, SUPPORTED_TYPES};

/// (rows, cols, what): the model's projections, then the tied Q8_0 output head.
const SHAPES: [(usize, usize, &str); 5] =
    [(576, 576, "q,o"), (192, 576, "k,v"), (1536, 576, "gate,up"), (576, 1536, "down"), (49152, 576, "head")];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let mut threads = vec![1, 0];
    let mut token_counts = vec![1, 128];
    let mut reference = false;
    let mut transposed = false;
    let mut names = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--threads" => {
                threads = vec![it.next().and_then(|n| n.parse().ok()).expect("--threads N")];
            }
            "--tokens" => {
                let list = it.next().expect("--tokens N,N,...");
                token_counts = list.split(',').map(|n| n.parse().expect("--tokens N,N,...")).collect();
            }
            "--reference" => reference = true,
            "--transposed" => transposed = true,
            _ => names.push(a.to_uppercase()),
        }
    }
    let formats: Vec<GgmlType> = SUPPORTED_TYPES
        .into_iter()
        .filter(|f| names.is_empty() || names.iter().any(|n| *n == f.name()))
        .collect();

    for &n in &threads {
        let pool = Threads::new(n).expect("thread pool");
        println!("\n== {} thread(s) ==", pool.count());
        println!(
            "{:<6} {:>11} {:<8} {:>6} {:>11} {:>9} {:>9}  kernel",
            "type", "shape", "site", "tokens", "time", "GFLOP/s", "GB/s"
        );
        for (rows, cols, site) in SHAPES {
            for &ty in &formats {
                // The head is only ever Q8_0 here (F32 stays as its peer); K-quant rows must be
                // whole 256-value super-blocks, which 576 is not.
                if (site == "head" && !matches!(ty, GgmlType::Q8_0 | GgmlType::F32))
                    || cols % ty.block_len() != 0
                {
                    continue;
                }
                let simd = matrix(ty, rows, cols);
                let kernels =
                    if reference { vec![simd.clone(), simd.with_reference_kernels()] } else { vec![simd] };
                for &tokens in &token_counts {
                    for m in &kernels {
                        let (inputs, outputs) = if transposed { (rows, cols) } else { (cols, rows) };
                        let x: Vec<f32> =
                            (0..tokens * inputs).map(|i| ((i * 7919) % 200) as f32 / 100.0 - 1.0).collect();
                        let mut y = vec![0f32; tokens * outputs];
                        let t = pool.install(|| {
                            time(|| {
                                let x = black_box(&x);
                                if transposed {
                                    m.matmul_transposed(x, tokens, &mut y).unwrap()
                                } else {
                                    m.matmul(x, tokens, &mut y).unwrap()
                                }
                            })
                        });
                        let secs = t.as_secs_f64();
                        let flops = 2.0 * (rows * cols * tokens) as f64;
                        println!(
                            "{:<6} {:>11} {:<8} {:>6} {:>9.1}us {:>9.1} {:>9.1}  {}",
                            ty.name(),
                            format!("{rows}x{cols}"),
                            site,
                            tokens,
                            secs * 1e6,
                            flops / secs / 1e9,
                            m.data().len() as f64 / secs / 1e9,
                            m.kernel()
                        );
                    }
                }
            }
        }
    }
}

fn matrix(ty: GgmlType, rows: usize, cols: usize) -> QuantMatrix {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let values: Vec<f32> = (0..rows * cols)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 0.2 - 0.1
        })
        .collect();
    QuantMatrix::quantize(ty, rows, cols, &values).expect("quantize")
}

/// The best time per call over a few batches of about 50 ms each.
fn time(mut f: impl FnMut()) -> Duration {
    f();
    let start = Instant::now();
    f();
    let once = start.elapsed().max(Duration::from_nanos(1));
    let per_batch = (Duration::from_millis(50).as_nanos() / once.as_nanos()).clamp(1, 100_000) as u32;
    (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..per_batch {
                f();
            }
            start.elapsed() / per_batch
        })
        .min()
        .unwrap()
}
