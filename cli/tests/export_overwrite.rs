//! `alignkit export --overwrite` replaces a previous export and nothing else
//! (issue 12.1): never the source run, a folder holding it, another run, or
//! a directory with unrelated files.

use std::path::Path;

mod common;
use common::{alignkit, ok, one_sft_step, refused, tiny_model, write_qa_sft};

/// `alignkit export SOURCE --merged OUT --overwrite` fails with one line
/// containing `why`.
fn refused_into(source: &Path, out: &Path, why: &str) {
    let line = refused(&alignkit([
        "export",
        source.to_str().unwrap(),
        "--merged",
        out.to_str().unwrap(),
        "--overwrite",
    ]));
    assert!(line.contains(why), "`{why}` missing from: {line}");
}

#[test]
fn overwrite_never_replaces_the_source_its_parent_or_unrelated_files() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = tmp.path().join("parent");
    std::fs::create_dir_all(&parent).unwrap();
    let model = tiny_model(&tmp.path().join("model"));
    let data = tmp.path().join("sft.jsonl");
    write_qa_sft(&data);
    let (run_a, run_b) = (parent.join("runA"), parent.join("runB"));
    one_sft_step(&model, &data, &run_a, &["--lora-r", "4"]);
    one_sft_step(&model, &data, &run_b, &["--lora-r", "4"]);
    std::fs::write(parent.join("notes.txt"), "keep me").unwrap();

    // The sweep's case: into the folder holding the run (and its sibling).
    refused_into(&run_a, &parent, "contains the input");
    // Into the run itself, into another run, and a run's final/ onto itself.
    refused_into(&run_a, &run_a, "is also an input");
    refused_into(&run_a, &run_b, "is a training run or checkpoint");
    refused_into(
        &run_a.join("final"),
        &run_a.join("final"),
        "is also an input",
    );
    for kept in [
        parent.join("notes.txt"),
        run_a.join("metrics.jsonl"),
        run_a.join("checkpoints/step-1/trainer_state.json"),
        run_a.join("final/config.json"),
        run_b.join("metrics.jsonl"),
        run_b.join("checkpoints/step-1/trainer_state.json"),
    ] {
        assert!(kept.is_file(), "{} was removed", kept.display());
    }

    // A previous export is replaced; one that gained a foreign file is not.
    let out = parent.join("merged");
    let export = |overwrite: bool| {
        let mut args = vec![
            "export",
            run_a.to_str().unwrap(),
            "--merged",
            out.to_str().unwrap(),
        ];
        if overwrite {
            args.push("--overwrite");
        }
        alignkit(args)
    };
    ok(&export(false));
    let err = refused(&export(false));
    assert!(err.contains("exists and is not empty"), "{err}");
    ok(&export(true));
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    refused_into(&run_a, &out, "holds `notes.txt`, which no export writes");
    assert!(out.join("notes.txt").is_file());
}
