//! A second, different template: Llama-3-Instruct's, whose tokenizer adds
//! `<|begin_of_text|>` itself (post-processor) and whose template renders it
//! too. Byte-level tokens make every expected id computable by hand.

mod common;

use alignkit_datasets::{
    EncodeConfig, Encoder, Message, PlainText, Preference, PromptRecord, Role, SftRecord, TrainOn,
    TruncationSide, Turns,
};
use common::{BOS, END_HEADER, END_OF_TEXT, EOT, NEWLINES, START_HEADER, bytes};

fn m(role: Role, c: &str) -> Message {
    Message::new(role, c)
}

/// `<|start_header_id|>role<|end_header_id|>\n\n`
fn header(role: &str) -> Vec<u32> {
    let mut v = vec![START_HEADER];
    v.extend(bytes(role));
    v.extend([END_HEADER, NEWLINES]);
    v
}

/// Expected ids and mask of a conversation, built by hand.
fn expected(msgs: &[(Role, &str)]) -> (Vec<u32>, Vec<bool>) {
    let mut ids = vec![BOS];
    let mut mask = vec![false];
    for (role, content) in msgs {
        let h = header(role.as_str());
        mask.extend(std::iter::repeat_n(false, h.len()));
        ids.extend(h);
        let mut body = bytes(content.trim());
        body.push(EOT);
        mask.extend(std::iter::repeat_n(*role == Role::Assistant, body.len()));
        ids.extend(body);
    }
    (ids, mask)
}

#[test]
fn conventions_come_from_the_right_files() {
    let (_d, enc) = common::llama3(EncodeConfig::default());
    let tok = enc.tokenizer();
    assert!(tok.adds_bos(), "detected from the post-processor");
    assert_eq!(tok.bos().unwrap().id, BOS);
    assert_eq!(tok.eos().unwrap().id, END_OF_TEXT, "AddedToken object form");
    assert!(tok.is_end_of_turn(EOT), "from generation_config.json");
    // chat_template.jinja wins over the tokenizer_config.json list.
    assert!(enc.render(&[m(Role::User, "x")], false).is_ok());
    assert_eq!(tok.encode("ab", true).unwrap(), vec![BOS, 97, 98]);
    assert_eq!(tok.encode("ab", false).unwrap(), vec![97, 98]);
}

#[test]
fn multi_turn_masks_cover_every_assistant_turn_and_one_bos() {
    let (_d, enc) = common::llama3(EncodeConfig::default());
    let conv = [
        (Role::System, "Be nice."),
        (Role::User, "Hi"),
        (Role::Assistant, " Hello! "),
        (Role::User, "Bye"),
        (Role::Assistant, "Ciao"),
    ];
    let msgs: Vec<Message> = conv.iter().map(|(r, c)| m(*r, c)).collect();
    let ex = enc.sft(&SftRecord::Messages(msgs)).unwrap();
    let (ids, mask) = expected(&conv);
    assert_eq!(ex.tokens.input_ids, ids);
    assert_eq!(ex.tokens.loss_mask, mask);
    assert_eq!(ex.tokens.input_ids.iter().filter(|&&i| i == BOS).count(), 1);
    assert!(ex.has_eos);
    // Two trained spans, each ending with <|eot_id|>.
    let ends: Vec<usize> = (1..ids.len())
        .filter(|&j| mask[j - 1] && !mask[j])
        .collect();
    assert_eq!(ends.len(), 1, "the second span runs to the end");
    assert_eq!(ids[ends[0] - 1], EOT);
    assert_eq!(*ids.last().unwrap(), EOT);
    assert!(*mask.last().unwrap());
}

#[test]
fn prompt_completion_and_generation_prompt() {
    let (_d, enc) = common::llama3(EncodeConfig::default());
    let prompt = vec![m(Role::User, "Q?")];
    let gen_ids = enc
        .prompt(&PromptRecord {
            prompt: Turns::Messages(prompt.clone()),
        })
        .unwrap()
        .prompt_ids;
    let mut want = expected(&[(Role::User, "Q?")]).0;
    want.extend(header("assistant"));
    assert_eq!(gen_ids, want);
    let ex = enc
        .sft(&SftRecord::PromptCompletion {
            prompt: Turns::Messages(prompt),
            completion: Turns::Messages(vec![m(Role::Assistant, "A.")]),
        })
        .unwrap();
    assert_eq!(ex.prompt_len, gen_ids.len());
    assert_eq!(&ex.tokens.input_ids[..gen_ids.len()], &gen_ids[..]);
    let trained: Vec<u32> = ex
        .tokens
        .input_ids
        .iter()
        .zip(&ex.tokens.loss_mask)
        .filter(|(_, m)| **m)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(trained, [bytes("A."), vec![EOT]].concat());
}

#[test]
fn no_double_bos_whatever_the_template_does() {
    // Template renders no BOS: the tokenizer's one is added.
    let dir = common::llama3_dir("{% for m in messages %}{{ m.content }}{% endfor %}", None);
    let enc = Encoder::from_dir(dir.path(), EncodeConfig::default()).unwrap();
    assert_eq!(
        enc.chat_ids(&[m(Role::User, "x")], false).unwrap(),
        vec![BOS, 120]
    );
    // Template renders BOS twice: collapsed to one.
    let dir = common::llama3_dir(
        "{{ bos_token }}{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}",
        None,
    );
    let enc = Encoder::from_dir(dir.path(), EncodeConfig::default()).unwrap();
    assert_eq!(
        enc.chat_ids(&[m(Role::User, "x")], false).unwrap(),
        vec![BOS, 120]
    );
    // add_bos_token: false overrides the post-processor: nothing added.
    let dir = common::llama3_dir(
        "{% for m in messages %}{{ m.content }}{% endfor %}",
        Some(false),
    );
    let enc = Encoder::from_dir(dir.path(), EncodeConfig::default()).unwrap();
    assert_eq!(
        enc.chat_ids(&[m(Role::User, "x")], false).unwrap(),
        vec![120]
    );
    // Raw text SFT: one BOS, EOS appended.
    let (_d, enc) = common::llama3(EncodeConfig::default());
    let ex = enc.sft(&SftRecord::Text("hi".into())).unwrap();
    assert_eq!(ex.tokens.input_ids, vec![BOS, 104, 105, END_OF_TEXT]);
    assert_eq!(ex.tokens.loss_mask, vec![false, true, true, true]);
    // Raw prompt/completion: BOS once, completion + EOS trained.
    let ex = enc
        .sft(&SftRecord::PromptCompletion {
            prompt: Turns::Text("<|begin_of_text|>Q".into()),
            completion: Turns::Text("A".into()),
        })
        .unwrap();
    assert_eq!(ex.tokens.input_ids, vec![BOS, 81, 65, END_OF_TEXT]);
    assert_eq!(ex.tokens.loss_mask, vec![false, false, true, true]);
}

#[test]
fn plain_text_as_chat() {
    let cfg = EncodeConfig {
        plain_text: PlainText::Chat,
        ..Default::default()
    };
    let (_d, enc) = common::llama3(cfg);
    let ex = enc
        .sft(&SftRecord::PromptCompletion {
            prompt: Turns::Text("Q".into()),
            completion: Turns::Text("A".into()),
        })
        .unwrap();
    let (ids, mask) = expected(&[(Role::User, "Q"), (Role::Assistant, "A")]);
    assert_eq!(ex.tokens.input_ids, ids);
    assert_eq!(ex.tokens.loss_mask, mask);
}

#[test]
fn preference_pairs_share_the_prompt() {
    let (_d, enc) = common::llama3(EncodeConfig::default());
    let pair = Preference {
        prompt: Turns::Messages(vec![m(Role::User, "Q")]),
        chosen: Turns::Messages(vec![m(Role::Assistant, "good")]),
        rejected: Turns::Messages(vec![m(Role::Assistant, "bad")]),
        implicit_prompt: false,
    };
    let ex = enc.preference(&pair).unwrap();
    let mut prompt = expected(&[(Role::User, "Q")]).0;
    prompt.extend(header("assistant"));
    assert_eq!(ex.prompt_ids, prompt);
    assert_eq!(ex.chosen_ids, [bytes("good"), vec![EOT]].concat());
    assert_eq!(ex.rejected_ids, [bytes("bad"), vec![EOT]].concat());
    assert!(ex.chosen_has_eos && ex.rejected_has_eos);
    let c = ex.chosen();
    assert_eq!(c.trained(), 5);
    assert_eq!(&c.input_ids[..prompt.len()], &prompt[..]);
}

#[test]
fn truncation_is_recorded_and_keeps_bos() {
    let conv = [(Role::User, "0123456789"), (Role::Assistant, "abcdefghij")];
    let msgs: Vec<Message> = conv.iter().map(|(r, c)| m(*r, c)).collect();
    let (full, _) = expected(&conv);
    let prompt_len = 1 + header("user").len() + 11 + header("assistant").len();

    // KeepStart cuts the completion's tail, EOS included, and says so.
    let (_d, enc) = common::llama3(EncodeConfig {
        max_len: Some(full.len() - 3),
        ..Default::default()
    });
    let ex = enc.sft(&SftRecord::Messages(msgs.clone())).unwrap();
    assert_eq!(ex.tokens.input_ids, full[..full.len() - 3]);
    assert_eq!(ex.truncation.original_len, full.len());
    assert_eq!(ex.truncation.completion_dropped, 3);
    assert!(ex.truncation.eos_dropped && !ex.has_eos);

    // KeepEnd drops the prompt's start after BOS and keeps the EOS.
    let (_d, enc) = common::llama3(EncodeConfig {
        max_len: Some(full.len() - 3),
        truncation: TruncationSide::KeepEnd,
        ..Default::default()
    });
    let ex = enc.sft(&SftRecord::Messages(msgs.clone())).unwrap();
    assert_eq!(ex.tokens.input_ids[0], BOS);
    assert_eq!(ex.tokens.input_ids[1..], full[4..]);
    assert_eq!(ex.truncation.prompt_dropped, 3);
    assert!(!ex.truncation.eos_dropped && ex.has_eos);
    assert_eq!(*ex.tokens.input_ids.last().unwrap(), EOT);
    assert_eq!(ex.prompt_len, prompt_len - 3);

    // max_prompt_len keeps BOS + the prompt's end.
    let (_d, enc) = common::llama3(EncodeConfig {
        max_prompt_len: Some(8),
        ..Default::default()
    });
    let ex = enc.sft(&SftRecord::Messages(msgs)).unwrap();
    assert_eq!(ex.prompt_len, 8);
    assert_eq!(ex.tokens.input_ids[0], BOS);
    assert_eq!(ex.tokens.input_ids[1..8], full[prompt_len - 7..prompt_len]);
    assert_eq!(ex.truncation.prompt_dropped, prompt_len - 8);
    assert_eq!(ex.tokens.trained(), 11);

    // Preference pairs: the shared prompt survives, each completion cut alone.
    let (_d, enc) = common::llama3(EncodeConfig {
        max_len: Some(prompt_len + 4),
        ..Default::default()
    });
    let pair = Preference {
        prompt: Turns::Messages(vec![m(Role::User, "0123456789")]),
        chosen: Turns::Messages(vec![m(Role::Assistant, "abc")]),
        rejected: Turns::Messages(vec![m(Role::Assistant, "abcdefgh")]),
        implicit_prompt: false,
    };
    let ex = enc.preference(&pair).unwrap();
    assert_eq!(ex.prompt_ids.len(), prompt_len);
    assert_eq!(ex.chosen_ids.len(), 4);
    assert!(ex.chosen_has_eos && !ex.chosen_truncation.any());
    assert_eq!(ex.rejected_ids, bytes("abcd"));
    assert!(ex.rejected_truncation.eos_dropped && !ex.rejected_has_eos);
}

#[test]
fn train_on_all() {
    let (_d, enc) = common::llama3(EncodeConfig {
        train_on: TrainOn::All,
        ..Default::default()
    });
    let ex = enc
        .sft(&SftRecord::Messages(vec![
            m(Role::User, "a"),
            m(Role::Assistant, "b"),
        ]))
        .unwrap();
    assert!(!ex.tokens.loss_mask[0]);
    assert!(ex.tokens.loss_mask[1..].iter().all(|&x| x));
}

#[test]
fn template_that_breaks_the_boundary_is_rejected_with_the_reason() {
    // Renders a "last turn" marker only on the final message: the prompt is
    // then not a prefix of the full conversation.
    let tmpl = "{{ bos_token }}{% for m in messages %}{% if loop.last %}*{% endif %}{{ m.role }}:{{ m.content }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";
    let dir = common::llama3_dir(tmpl, None);
    let enc = Encoder::from_dir(dir.path(), EncodeConfig::default()).unwrap();
    let err = enc
        .sft(&SftRecord::Messages(vec![
            m(Role::User, "q"),
            m(Role::Assistant, "a"),
        ]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("field `messages[1]`"), "{err}");
    assert!(err.contains("not a token prefix"), "{err}");
    assert!(err.contains("renders earlier turns differently"), "{err}");
}

#[test]
fn raise_exception_in_the_template_names_the_problem() {
    let tmpl = "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}";
    let dir = common::llama3_dir(tmpl, None);
    let enc = Encoder::from_dir(dir.path(), EncodeConfig::default()).unwrap();
    let err = enc
        .sft(&SftRecord::Messages(vec![
            m(Role::System, "s"),
            m(Role::Assistant, "a"),
        ]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("System role not supported"), "{err}");
}

#[test]
fn kto_and_pair_batches() {
    use alignkit_datasets::{KtoRecord, PaddingSide, collate_pairs};
    let (_d, enc) = common::llama3(EncodeConfig::default());
    let kto = enc
        .kto(&KtoRecord {
            prompt: Turns::Messages(vec![m(Role::User, "Q")]),
            completion: Turns::Messages(vec![m(Role::Assistant, "ok")]),
            label: false,
        })
        .unwrap();
    assert!(!kto.label && kto.has_eos);
    assert_eq!(kto.completion_ids, [bytes("ok"), vec![EOT]].concat());

    let pair = |c: &str, r: &str| {
        enc.preference(&Preference {
            prompt: Turns::Messages(vec![m(Role::User, "Q")]),
            chosen: Turns::Messages(vec![m(Role::Assistant, c)]),
            rejected: Turns::Messages(vec![m(Role::Assistant, r)]),
            implicit_prompt: false,
        })
        .unwrap()
    };
    let pairs = [pair("yes", "no"), pair("a", "longer one")];
    let b = collate_pairs(&pairs, 0, PaddingSide::Right);
    assert_eq!(b.batch_size, 4);
    // Rows: chosen 0, chosen 1, rejected 0, rejected 1.
    let trained = |r: usize| -> Vec<u32> {
        (0..b.seq_len)
            .filter(|&t| b.loss_mask[r * b.seq_len + t])
            .map(|t| b.input_ids[r * b.seq_len + t])
            .collect()
    };
    assert_eq!(trained(0), [bytes("yes"), vec![EOT]].concat());
    assert_eq!(trained(1), [bytes("a"), vec![EOT]].concat());
    assert_eq!(trained(2), [bytes("no"), vec![EOT]].concat());
    assert_eq!(trained(3), [bytes("longer one"), vec![EOT]].concat());
    assert_eq!(
        b.seq_len,
        pairs[1].chosen().len().max(pairs[1].rejected().len())
    );
}
