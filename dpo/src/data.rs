//! Preference data: JSONL → tokenized pairs (alignkit-datasets) → pair
//! micro-batches in a seeded per-epoch order.

use alignkit_datasets::{
    EncodeConfig, Encoded, Encoder, FieldMap, PlainText, PreferenceExample, SplitConfig, TrainOn,
    TruncationSide, shuffled_batches,
};
use alignkit_train::seed::{Stream, derive_seed};
use alignkit_train::{DataFile, check_validation_set, sha256_file};

use crate::config::DpoConfig;
use crate::error::Result;

/// The tokenized training and validation pairs.
#[derive(Debug, Clone)]
pub struct PairData {
    pub train: Vec<PreferenceExample>,
    pub validation: Vec<PreferenceExample>,
    /// The files read, with their SHA-256.
    pub files: Vec<DataFile>,
    /// Pairs whose prompt or completions were cut to fit.
    pub truncated: usize,
}

/// The encoder for the model's tokenizer and chat template, truncating as TRL's
/// DPO does (`truncation_mode = "keep_end"`: the prompt loses its start first).
pub fn encoder(config: &DpoConfig) -> Result<Encoder> {
    Ok(Encoder::from_dir(
        &config.model,
        EncodeConfig {
            max_len: Some(config.data.max_len),
            max_prompt_len: Some(config.data.max_prompt_len),
            truncation: TruncationSide::KeepEnd,
            train_on: TrainOn::Completion,
            plain_text: if config.data.text_as_chat {
                PlainText::Chat
            } else {
                PlainText::Raw
            },
            completion_end: config.data.completion_end,
            template_kwargs: config.data.chat_template_kwargs.clone(),
        },
    )?)
}

/// Reject pairs whose chosen and rejected are the same tokens — before any
/// training work, naming the first such line (the rule `data validate`
/// applies too: `PreferenceExample::check_distinct`).
pub fn check_pairs(encoded: &[Encoded<PreferenceExample>]) -> Result<()> {
    for e in encoded {
        e.example.check_distinct().map_err(|err| err.at(&e.at))?;
    }
    Ok(())
}

/// Read, tokenize, check and split the pairs of `config`.
pub fn load(config: &DpoConfig, encoder: &Encoder) -> Result<PairData> {
    let fields = FieldMap::default();
    let mut files = vec![DataFile {
        path: config.data.train_file.clone(),
        sha256: sha256_file(&config.data.train_file)?,
    }];
    let encoded = encoder.encode_preference_file(&config.data.train_file, &fields)?;
    check_pairs(&encoded)?;
    let (train, validation) = match &config.data.validation_file {
        Some(path) => {
            files.push(DataFile {
                path: path.clone(),
                sha256: sha256_file(path)?,
            });
            let v = encoder.encode_preference_file(path, &fields)?;
            check_pairs(&v)?;
            (encoded, v)
        }
        None => {
            let split = SplitConfig::new(config.train.seed, config.data.validation_split, 0.0)?;
            let sets = split.partition(encoded, |e| &e.digest);
            (sets.train, sets.validation)
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
        .filter(|e| e.example.chosen_truncation.any() || e.example.rejected_truncation.any())
        .count();
    let strip = |v: Vec<Encoded<PreferenceExample>>| v.into_iter().map(|e| e.example).collect();
    Ok(PairData {
        train: strip(train),
        validation: strip(validation),
        files,
        truncated,
    })
}

/// The pair indices of each micro-batch of `epoch`, in a seeded order.
pub fn epoch_order(pairs: usize, batch_size: usize, seed: u64, epoch: usize) -> Vec<Vec<usize>> {
    shuffled_batches(
        pairs,
        batch_size,
        derive_seed(seed, Stream::DataOrder, epoch as u64, 0),
    )
}

/// The pair indices in file order (evaluation, precomputation).
pub fn in_order(pairs: usize, batch_size: usize) -> Vec<Vec<usize>> {
    (0..pairs)
        .collect::<Vec<_>>()
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}
