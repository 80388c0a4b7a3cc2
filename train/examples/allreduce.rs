//! Time the gradient all-reduce of a distributed run: `N` f32 elements (by
//! default SmolLM2-135M's full gradient, 134,515,008) summed over the ranks,
//! as `Run::apply` sums a step's gradients. Start one process per rank, as a
//! scheduler would (rank 0 runs the orchestrator):
//!
//! ```sh
//! for r in 0 1; do WORLD_SIZE=2 RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=29800 \
//!     cargo run -p alignkit-train --example allreduce -- 134515008 5 & done; wait
//! ```
//!
//! Prints, on rank 0, each repetition's seconds and the algorithm bandwidth
//! (bytes of the tensor / seconds) and bus bandwidth (× 2(n−1)/n, NCCL's
//! convention for a ring all-reduce).

use std::time::Instant;

use alignkit_train::dist::{self, World, WorldSpec};
use burn::backend::Flex;
use burn::tensor::Tensor;

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(134_515_008, |a| a.parse().expect("N"));
    let reps: usize = args.next().map_or(5, |a| a.parse().expect("repetitions"));
    let spec = WorldSpec::from_env()
        .expect("launch variables")
        .expect("WORLD_SIZE > 1");
    let device = Default::default();
    if spec.rank == 0 {
        dist::start_orchestrator(spec.master_port).expect("orchestrator");
    }
    let world = World::join::<Flex>(spec, 0, &device).expect("join");
    let ranks = world.size() as f64;
    let x: Tensor<Flex, 1> = Tensor::ones([n], &device);
    for rep in 0..reps {
        let started = Instant::now();
        let sum = world.sum_tensor(x.clone(), "timing").expect("all-reduce");
        let secs = started.elapsed().as_secs_f64();
        let first: f32 = sum.slice(0..1).into_scalar();
        assert_eq!(first, ranks as f32);
        if world.writes() {
            let bytes = (n * 4) as f64;
            println!(
                "rep {rep}: {n} f32 over {ranks} ranks in {secs:.3} s: algbw {:.2} GB/s, busbw {:.2} GB/s",
                bytes / secs / 1e9,
                bytes / secs / 1e9 * 2.0 * (ranks - 1.0) / ranks
            );
        }
    }
}
