//! Preference data for reward models: JSONL → tokenized pairs with optional
//! margins → micro-batches of 2N rows (chosen, then rejected).

use std::path::Path;

use alignkit_datasets::{
    CompletionEnd, EncodeConfig, Encoder, FieldMap, Location, PlainText, Preference,
    PreferenceExample, SplitConfig, TemplateKwargs, TrainOn, TruncationSide, jsonl,
};
use alignkit_train::{DataFile, check_validation_set, sha256_file};

use crate::config::RewardConfig;
use crate::error::{Result, RewardError};

/// A tokenized pair and TRL's optional per-pair margin m in −log σ(r_c − r_r − m).
#[derive(Debug, Clone, PartialEq)]
pub struct RewardPair {
    pub example: PreferenceExample,
    pub margin: Option<f32>,
}

/// The tokenized training and validation pairs.
#[derive(Debug, Clone)]
pub struct RewardData {
    pub train: Vec<RewardPair>,
    pub validation: Vec<RewardPair>,
    /// The files read, with their SHA-256.
    pub files: Vec<DataFile>,
    /// Pairs whose prompt or completions were cut to fit.
    pub truncated: usize,
}

/// The encoder for the model's tokenizer and chat template. Over-long pairs
/// lose the start of the prompt first, so each sequence keeps its end, where
/// the score is read.
pub fn encoder(
    model_dir: &Path,
    max_len: usize,
    text_as_chat: bool,
    completion_end: CompletionEnd,
    template_kwargs: &TemplateKwargs,
) -> Result<Encoder> {
    Ok(Encoder::from_dir(
        model_dir,
        EncodeConfig {
            max_len: Some(max_len),
            max_prompt_len: None,
            truncation: TruncationSide::KeepEnd,
            train_on: TrainOn::Completion,
            plain_text: if text_as_chat {
                PlainText::Chat
            } else {
                PlainText::Raw
            },
            completion_end,
            template_kwargs: template_kwargs.clone(),
        },
    )?)
}

/// Read and tokenize a preference file, with each record's location and
/// content digest. Identical chosen/rejected pairs and non-numeric margins are
/// errors naming the line.
pub fn read_pairs(path: &Path, encoder: &Encoder) -> Result<Vec<(Location, [u8; 32], RewardPair)>> {
    let mut out = Vec::new();
    for rec in jsonl::read::<Preference>(path, &FieldMap::default())? {
        let rec = rec?;
        let example = encoder.preference(&rec.value).map_err(|e| e.at(&rec.at))?;
        example.check_distinct().map_err(|e| e.at(&rec.at))?;
        let margin =
            match rec.extra.get("margin") {
                None | Some(serde_json::Value::Null) => None,
                Some(v) => Some(v.as_f64().filter(|m| m.is_finite()).ok_or_else(|| {
                    RewardError::Margin {
                        at: rec.at.clone(),
                        message: format!("expected a number, got {v}"),
                    }
                })? as f32),
            };
        out.push((rec.at, rec.digest, RewardPair { example, margin }));
    }
    Ok(out)
}

/// Read, tokenize, check and split the pairs of `config`.
pub fn load(config: &RewardConfig, encoder: &Encoder) -> Result<RewardData> {
    let mut files = vec![DataFile {
        path: config.data.train_file.clone(),
        sha256: sha256_file(&config.data.train_file)?,
    }];
    let strip = |v: Vec<(Location, [u8; 32], RewardPair)>| -> Vec<RewardPair> {
        v.into_iter().map(|(_, _, p)| p).collect()
    };
    let encoded = read_pairs(&config.data.train_file, encoder)?;
    let (train, validation) = match &config.data.validation_file {
        Some(path) => {
            files.push(DataFile {
                path: path.clone(),
                sha256: sha256_file(path)?,
            });
            (strip(encoded), strip(read_pairs(path, encoder)?))
        }
        None => {
            let split = SplitConfig::new(config.train.seed, config.data.validation_split, 0.0)?;
            let sets = split.partition(encoded, |e| &e.1);
            (strip(sets.train), strip(sets.validation))
        }
    };
    check_validation_set(
        config.data.validation_file.as_deref(),
        config.data.validation_split,
        validation.len(),
        train.len() + validation.len(),
    )?;
    let truncated = train
        .iter()
        .chain(&validation)
        .filter(|p| p.example.chosen_truncation.any() || p.example.rejected_truncation.any())
        .count();
    Ok(RewardData {
        train,
        validation,
        files,
        truncated,
    })
}
