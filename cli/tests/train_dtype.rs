//! `train.dtype = "bf16"` on a backend that trains in f32 (issue 16.2): the
//! run says so in one line and records what it really did, so that the run
//! directory's config and its checkpoints agree.

mod common;
use common::{one_sft_step, tiny_model, write_qa_sft};

#[test]
fn bf16_on_the_cpu_backend_trains_in_f32_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(&tmp.path().join("model"));
    let data = tmp.path().join("sft.jsonl");
    write_qa_sft(&data);
    let run = tmp.path().join("run");
    let extra = ["--set", "train.dtype=bf16", "--device", "cpu"];
    let stderr = one_sft_step(&model, &data, &run, &extra);
    let notes: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("train.dtype"))
        .collect();
    assert_eq!(
        notes,
        ["train.dtype = \"bf16\" trains on CUDA only: this run (--device cpu) trains in f32"],
        "{stderr}"
    );
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let table: toml::Table = config.parse().unwrap();
    assert_eq!(table["train"]["dtype"].as_str(), Some("f32"), "{config}");
}
