//! The shared tiny model, tokenizer and preference data
//! (`alignkit_train::testutil`), and a reward-model run config over them.

#![allow(dead_code)]

use std::path::Path;

use alignkit_reward::RewardConfig;
pub use alignkit_train::testutil::*;

/// A run config over `model` and `data` writing into `out`.
pub fn config(model: &Path, data: &Path, out: &Path) -> RewardConfig {
    let mut c = RewardConfig {
        model: model.to_path_buf(),
        output_dir: out.to_path_buf(),
        learning_rate: 5e-3,
        ..Default::default()
    };
    c.data.train_file = data.to_path_buf();
    c.data.max_len = 64;
    c.train.batch_size = 3;
    c.train.max_steps = 6;
    c.train.save_steps = 3;
    c.train.keep_last = 0;
    c.schedule.kind = alignkit_train::ScheduleKind::Constant;
    c.optim.weight_decay = 0.0;
    c
}
