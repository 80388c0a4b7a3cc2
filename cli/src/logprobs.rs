//! `alignkit logprobs`: per-token log-probabilities of a completion.

use alignkit_model::ForwardInput;
use alignkit_model::logprobs::sequence_logprobs;
use alignkit_model::mask::attention_mask;
use anyhow::{Result, bail};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use clap::Args;

use crate::backend::{Task, dispatch};
use crate::common::{Loaded, ModelArgs, TemplateArgs};

#[derive(Args)]
pub struct LogprobsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text the completion follows (not scored).
    #[arg(long)]
    pub prompt: String,
    /// The text whose tokens are scored, each given everything before it.
    #[arg(long)]
    pub completion: String,
    /// Render the prompt as a user turn with the chat template.
    #[arg(long)]
    pub chat: bool,
    #[command(flatten)]
    pub template: TemplateArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl Task for LogprobsArgs {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        type I<B> = <B as AutodiffBackend>::InnerBackend;
        let dir = self.model.dir()?;
        let loaded = Loaded::<I<B>>::load(&dir, &device, &self.template.kwargs()?)?;
        let tokenizer = loaded.tokenizer();
        let prompt = loaded.prompt_ids(&self.prompt, self.chat, None)?;
        let completion = tokenizer.encode(&self.completion, false)?;
        if prompt.is_empty() {
            bail!("the prompt encodes to no tokens, so the first completion token has no context");
        }
        if completion.is_empty() {
            bail!("the completion encodes to no tokens");
        }
        let ids: Vec<u32> = prompt.iter().chain(&completion).copied().collect();
        let t = ids.len();
        let input = ForwardInput {
            input_ids: Tensor::<I<B>, 2, Int>::from_data(
                TensorData::new(ids.iter().map(|&x| x as i64).collect::<Vec<_>>(), [1, t]),
                &device,
            ),
            positions: Tensor::<I<B>, 2, Int>::from_data(
                TensorData::new((0..t as i64).collect::<Vec<_>>(), [1, t]),
                &device,
            ),
            mask: attention_mask::<I<B>>(&[vec![true; t]], t, None, &device),
        };
        let all = sequence_logprobs(&loaded.model, input)
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        // all[i] = log p(ids[i + 1]); the completion starts at ids[prompt.len()].
        let per_token = &all[prompt.len() - 1..];
        let total: f64 = per_token.iter().map(|&x| x as f64).sum();
        if self.json {
            let tokens: Vec<_> = completion
                .iter()
                .zip(per_token)
                .map(|(&id, &lp)| serde_json::json!({"id": id, "token": tokenizer.token_text(id), "logprob": lp}))
                .collect();
            let out = serde_json::json!({
                "prompt_tokens": prompt.len(), "completion_tokens": completion.len(),
                "tokens": tokens, "total_logprob": total,
            });
            println!("{out}");
        } else {
            for (&id, &lp) in completion.iter().zip(per_token) {
                println!("{lp:>10.4}  {:?}", tokenizer.token_text(id));
            }
            println!("{total:>10.4}  total over {} tokens", completion.len());
        }
        Ok(())
    }
}

pub fn run(args: LogprobsArgs) -> Result<()> {
    dispatch(args.model.device, args)
}
