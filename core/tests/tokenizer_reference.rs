//! The SmolLM2 (byte-level BPE) and Gemma 3 (SentencePiece) tokenizers built from GGUF metadata
//! against transformers reading the same file: `tests/reference/tokenizer_cases.json` and
//! `golden/gemma3/tokenizer_cases.json` hold the ids and chat renderings transformers gives.
//! Needs the real model (`common::real_model`: skipped with a note without it, a failure where
//! `ADAPTKIT_REQUIRE_MODEL` is set, as in CI).

use adaptkit::format::gguf::GgufFile;
use adaptkit::tokenizer::{Message, StreamDecoder, Tokenizer};
use serde::Deserialize;

mod common;
use common::{gemma_model, real_model, GEMMA_MODEL_FILE, REAL_MODEL_FILE as MODEL};

const CASES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/reference/tokenizer_cases.json");
const GEMMA_CASES: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/reference/golden/gemma3/tokenizer_cases.json");

#[derive(Deserialize)]
struct Reference {
    model: String,
    cases: Vec<Case>,
    chat: Vec<Chat>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    /// transformers' `encode(text, add_special_tokens=False)`.
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Chat {
    messages: Vec<Message>,
    add_generation_prompt: bool,
    rendered: String,
}

#[test]
fn smollm2_tokenizer_matches_transformers() {
    let Some(path) = real_model() else { return };
    let tokenizer = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    assert_eq!((tokenizer.vocab_size(), tokenizer.bos(), tokenizer.eos()), (49152, Some(1), Some(2)));
    let im_end = tokenizer.token_id("<|im_end|>").unwrap();
    let endoftext = tokenizer.token_id("<|endoftext|>").unwrap();
    assert!(tokenizer.is_end_of_generation(im_end) && tokenizer.is_end_of_generation(endoftext));
    // The GGUF has add_bos_token = false, so asking for special tokens adds none.
    check_against_transformers(&tokenizer, CASES, MODEL, &[]);
}

/// Gemma 3's SentencePiece vocabulary (scores, byte fallback, control and user-defined pieces)
/// and its chat template, against transformers on the same file.
#[test]
fn gemma3_tokenizer_matches_transformers() {
    let Some(path) = gemma_model() else { return };
    let file = GgufFile::open(&path).unwrap();
    let (resident, started) = (resident_mb(), std::time::Instant::now());
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    // A measurement for the README, not a check: 262k pieces and the 515k merges built from them.
    eprintln!(
        "Gemma tokenizer built in {:.2} s, resident memory +{:.0} MB",
        started.elapsed().as_secs_f64(),
        resident_mb() - resident
    );
    assert_eq!((tokenizer.vocab_size(), tokenizer.bos(), tokenizer.eos()), (262_144, Some(2), Some(1)));
    let end_of_turn = tokenizer.token_id("<end_of_turn>").unwrap();
    assert!(tokenizer.is_end_of_generation(end_of_turn));
    // add_bos_token = true: asking for special tokens puts <bos> first.
    check_against_transformers(&tokenizer, GEMMA_CASES, GEMMA_MODEL_FILE, &[2]);
}

/// `tokenizer` gives the ids and chat renderings of the transformers reference `cases` (made
/// from `model`), decodes them back to the text, also streamed, and puts `bos` before them when
/// asked for special tokens.
fn check_against_transformers(tokenizer: &Tokenizer, cases: &str, model: &str, bos: &[u32]) {
    let reference: Reference =
        serde_json::from_slice(&std::fs::read(cases).unwrap_or_else(|e| panic!("{cases}: {e}")))
            .unwrap_or_else(|e| panic!("{cases}: {e}"));
    assert_eq!(reference.model, model);
    let mut mismatches = Vec::new();
    for case in &reference.cases {
        let ids = tokenizer.encode(&case.text, false).unwrap();
        if ids != case.ids {
            mismatches.push(format!("{:?}: ours {ids:?}, transformers {:?}", case.text, case.ids));
        }
        assert_eq!(tokenizer.encode(&case.text, true).unwrap(), [bos, &ids].concat(), "{:?}", case.text);
        assert_eq!(tokenizer.decode(&case.ids, false).unwrap(), case.text, "decode(encode(x)) != x");
        assert_eq!(streamed(tokenizer, &case.ids), case.text, "streamed pieces of {:?}", case.text);
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} cases differ from transformers:\n{}",
        mismatches.len(),
        reference.cases.len(),
        mismatches.join("\n")
    );
    eprintln!("{} tokenization cases match transformers", reference.cases.len());

    let template = tokenizer.chat_template().unwrap();
    for chat in &reference.chat {
        let rendered = template.render(&chat.messages, chat.add_generation_prompt).unwrap();
        assert_eq!(rendered, chat.rendered, "add_generation_prompt = {}", chat.add_generation_prompt);
    }
    eprintln!("{} chat renderings match transformers", reference.chat.len());
}

/// The text a [`StreamDecoder`] lets out for `ids`, one id at a time, plus what `finish` flushes.
fn streamed(tokenizer: &Tokenizer, ids: &[u32]) -> String {
    let mut stream = StreamDecoder::new(false);
    let mut text = String::new();
    for &id in ids {
        text.extend(stream.push(tokenizer, id).unwrap());
    }
    text + &stream.finish(tokenizer).unwrap()
}

/// This process's resident memory now (Linux `/proc/self/statm`), in MB; 0 elsewhere.
fn resident_mb() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0.0);
    pages * 4096.0 / 1e6
}
