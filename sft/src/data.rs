//! Training data: JSONL → token sequences with loss masks (alignkit-datasets)
//! → micro-batches in a seeded per-epoch order → model inputs.

use alignkit_datasets::{
    Batch, CompletionEnd, EncodeConfig, Encoder, FieldMap, PaddingSide, Sequence, SplitConfig,
    TruncationSide, collate, collate_packed, pack, shuffled_batches,
};
use alignkit_model::ForwardInput;
use alignkit_model::mask::attention_mask;
use alignkit_train::seed::{Stream, derive_seed};
use alignkit_train::{DataFile, check_validation_set, sha256_file};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::config::SftConfig;
use crate::error::Result;

/// The tokenized training and validation sets.
#[derive(Debug, Clone)]
pub struct SftData {
    pub train: Vec<Sequence>,
    pub validation: Vec<Sequence>,
    /// The files read, with their SHA-256.
    pub files: Vec<DataFile>,
    /// Examples cut to `max_len`.
    pub truncated: usize,
    /// Examples left with no trained token (dropped).
    pub without_targets: usize,
}

/// The encoder for the model's tokenizer and chat template.
pub fn encoder(config: &SftConfig) -> Result<Encoder> {
    Ok(Encoder::from_dir(
        &config.model,
        EncodeConfig {
            max_len: Some(config.data.max_len),
            max_prompt_len: None,
            truncation: TruncationSide::KeepStart,
            train_on: config.train_on(),
            plain_text: config.plain_text(),
            // SFT has no preference completions.
            completion_end: CompletionEnd::default(),
            template_kwargs: config.data.chat_template_kwargs.clone(),
        },
    )?)
}

/// Read, tokenize and split the data of `config`.
pub fn load(config: &SftConfig, encoder: &Encoder) -> Result<SftData> {
    let fields = FieldMap::default();
    let mut files = vec![DataFile {
        path: config.data.train_file.clone(),
        sha256: sha256_file(&config.data.train_file)?,
    }];
    let encoded = encoder.encode_sft_file(&config.data.train_file, &fields)?;
    let (train, validation) = match &config.data.validation_file {
        Some(path) => {
            files.push(DataFile {
                path: path.clone(),
                sha256: sha256_file(path)?,
            });
            (encoded, encoder.encode_sft_file(path, &fields)?)
        }
        None => {
            let split = SplitConfig::new(config.train.seed, config.data.validation_split, 0.0)?;
            let sets = split.partition(encoded, |e| &e.digest);
            (sets.train, sets.validation)
        }
    };
    let mut truncated = 0;
    let mut without_targets = 0;
    let mut keep = |set: Vec<alignkit_datasets::Encoded<alignkit_datasets::SftExample>>| {
        set.into_iter()
            .filter_map(|e| {
                truncated += e.example.truncation.any() as usize;
                if e.example.tokens.trained() == 0 {
                    without_targets += 1;
                    None
                } else {
                    Some(e.example.tokens)
                }
            })
            .collect::<Vec<_>>()
    };
    let train = keep(train);
    let validation = keep(validation);
    check_validation_set(
        config.data.validation_file.as_deref(),
        config.data.validation_split,
        validation.len(),
        train.len() + validation.len(),
    )?;
    Ok(SftData {
        train,
        validation,
        files,
        truncated,
        without_targets,
    })
}

/// What a micro-batch is cut from: examples one per row (padded to the
/// longest in the batch), or rows packed to `max_len`.
#[derive(Debug, Clone)]
pub enum Rows {
    Padded(Vec<Sequence>),
    Packed(Vec<alignkit_datasets::PackedRow>),
}

impl Rows {
    pub fn new(seqs: Vec<Sequence>, packing: bool, max_len: usize, pad_id: u32) -> Result<Self> {
        Ok(if packing {
            Rows::Packed(pack(&seqs, max_len, pad_id)?)
        } else {
            Rows::Padded(seqs)
        })
    }

    pub fn len(&self) -> usize {
        match self {
            Rows::Padded(s) => s.len(),
            Rows::Packed(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn packed(&self) -> bool {
        matches!(self, Rows::Packed(_))
    }

    /// Micro-batches per epoch.
    pub fn micro_batches(&self, batch_size: usize) -> usize {
        self.len().div_ceil(batch_size)
    }

    /// The row indices of each micro-batch of `epoch`, in a seeded order.
    pub fn epoch_order(&self, batch_size: usize, seed: u64, epoch: usize) -> Vec<Vec<usize>> {
        shuffled_batches(
            self.len(),
            batch_size,
            derive_seed(seed, Stream::DataOrder, epoch as u64, 0),
        )
    }

    /// The row indices in file order (evaluation).
    pub fn in_order(&self, batch_size: usize) -> Vec<Vec<usize>> {
        (0..self.len())
            .collect::<Vec<_>>()
            .chunks(batch_size.max(1))
            .map(<[usize]>::to_vec)
            .collect()
    }

    pub fn collate(&self, rows: &[usize], pad_id: u32) -> Batch {
        match self {
            Rows::Padded(s) => collate(rows.iter().map(|&i| &s[i]), pad_id, PaddingSide::Right),
            Rows::Packed(r) => collate_packed(rows.iter().map(|&i| &r[i])),
        }
    }
}

/// Model inputs of a batch. Packed rows attend within their segment.
pub fn forward_input<B: Backend>(
    batch: &Batch,
    packed: bool,
    device: &B::Device,
) -> ForwardInput<B> {
    let (b, t) = (batch.batch_size, batch.seq_len);
    let ids: Vec<i64> = batch.input_ids.iter().map(|&i| i as i64).collect();
    let valid: Vec<Vec<bool>> = batch
        .attention_mask
        .chunks(t)
        .map(<[bool]>::to_vec)
        .collect();
    let segments: Option<Vec<Vec<u32>>> =
        packed.then(|| batch.segment_ids.chunks(t).map(<[u32]>::to_vec).collect());
    ForwardInput {
        input_ids: Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, t]), device),
        positions: Tensor::<B, 2, Int>::from_data(
            TensorData::new(batch.position_ids.clone(), [b, t]),
            device,
        ),
        mask: attention_mask(&valid, t, segments.as_deref(), device),
    }
}
