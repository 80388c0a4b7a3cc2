//! `alignkit export --overwrite` replaces a previous export and nothing else
//! (issue 12.1): never the source run, a folder holding it, another run, or
//! a directory with unrelated files.

use std::path::Path;

mod common;
use common::{alignkit, one_sft_step, tiny_model, write_qa_sft};

/// Whether `alignkit args` succeeded, and its stderr.
fn status_and_stderr(args: &[&str]) -> (bool, String) {
    let out = alignkit(args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `alignkit export SOURCE --merged OUT --overwrite` fails with one line
/// containing `why`.
fn refused(source: &Path, out: &Path, why: &str) {
    let (ok, stderr) = status_and_stderr(&[
        "export",
        source.to_str().unwrap(),
        "--merged",
        out.to_str().unwrap(),
        "--overwrite",
    ]);
    assert!(!ok, "export into {} should be refused", out.display());
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected:\n{stderr}");
    assert!(lines[0].contains(why), "`{why}` missing from: {}", lines[0]);
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
    refused(&run_a, &parent, "contains the export's source");
    // Into the run itself, into another run, and a run's final/ onto itself.
    refused(&run_a, &run_a, "is the export's source");
    refused(&run_a, &run_b, "is a training run or checkpoint");
    refused(
        &run_a.join("final"),
        &run_a.join("final"),
        "is the export's source",
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
        status_and_stderr(&args)
    };
    assert!(export(false).0);
    let (ok, stderr) = export(false);
    assert!(
        !ok && stderr.contains("exists and is not empty"),
        "{stderr}"
    );
    let (ok, stderr) = export(true);
    assert!(ok, "re-export over a previous export failed:\n{stderr}");
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    refused(&run_a, &out, "holds `notes.txt`, which no export writes");
    assert!(out.join("notes.txt").is_file());
}
