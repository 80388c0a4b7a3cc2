use burn::backend::Flex;
use burn::tensor::{Distribution, Tensor};
use std::time::Instant;
type B = Flex;
fn t(name: &str, f: &dyn Fn() -> Tensor<B, 2>) {
    let n = 20;
    let _ = f();
    let t0 = Instant::now();
    for _ in 0..n {
        let _ = f();
    }
    println!(
        "{name:50} {:.3} ms",
        t0.elapsed().as_secs_f64() * 1e3 / n as f64
    );
}
fn main() {
    let d = Default::default();
    let r = |s: [usize; 2]| Tensor::<B, 2>::random(s, Distribution::Normal(0.0, 1.0), &d);
    let x = r([1024, 576]);
    let w = r([1536, 576]);
    let w2 = r([3072, 576]);
    t("x·W^T 1536", &|| x.clone().matmul(w.clone().transpose()));
    t("x·W^T 3072 (gate+up)", &|| {
        x.clone().matmul(w2.clone().transpose())
    });
    let wt = w2.clone().transpose().into_data();
    let wt = Tensor::<B, 2>::from_data(wt, &d);
    t("x·Wc 3072 contiguous", &|| x.clone().matmul(wt.clone()));
    t("(W·x^T) 1536 [1536,1024]", &|| {
        w.clone().matmul(x.clone().transpose())
    });
    for m in [256usize, 512] {
        let xs = r([m, 576]);
        t(&format!("x[{m}]·W^T 1536 x{}", 1024 / m), &|| {
            let mut o = None;
            for _ in 0..1024 / m {
                o = Some(xs.clone().matmul(w.clone().transpose()));
            }
            o.unwrap()
        });
    }
    let xd = r([1024, 1536]);
    let wd = r([576, 1536]);
    t("down x·W^T [1024,1536]x[1536,576]", &|| {
        xd.clone().matmul(wd.clone().transpose())
    });
}
