//! Tests on a tiny hand-made byte-level BPE; the real model is checked against transformers in
//! `core/tests/tokenizer_reference.rs`.

use tokenizers::pre_tokenizers::byte_level::ByteLevel;

use super::*;

const SPECIAL: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
/// Merges in priority order; every merged pair is also a token.
const MERGES: [&str; 9] = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld"];

/// Three control tokens (ids 0..3), the 256 byte symbols, then one token per merge.
fn spec() -> TokenizerSpec {
    let mut symbols: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    symbols.sort_unstable();
    let merged = MERGES.iter().map(|m| m.replace(' ', ""));
    let tokens: Vec<String> = SPECIAL
        .iter()
        .map(|s| s.to_string())
        .chain(symbols.iter().map(char::to_string))
        .chain(merged)
        .collect();
    let token_types = (0..tokens.len()).map(|i| if i < SPECIAL.len() { 3 } else { 1 }).collect();
    TokenizerSpec {
        tokens,
        merges: MERGES.iter().map(|m| m.to_string()).collect(),
        token_types,
        bos: Some(1),
        eos: Some(2),
        pad: Some(0),
        pre: Some("smollm".into()),
        ..TokenizerSpec::default()
    }
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_spec(spec()).unwrap()
}

fn id(t: &Tokenizer, token: &str) -> u32 {
    t.token_id(token).unwrap_or_else(|| panic!("no token {token:?}"))
}

#[test]
fn encodes_with_merges_and_decodes_back() {
    let t = tokenizer();
    let ids = t.encode("hello world", false).unwrap();
    assert_eq!(ids, [id(&t, "hello"), id(&t, "Ġworld")]);
    assert_eq!(t.decode(&ids, false).unwrap(), "hello world");
    assert_eq!(t.token_text(ids[1]).as_deref(), Some("Ġworld"));
    assert_eq!(t.vocab_size(), 3 + 256 + MERGES.len());
}

#[test]
fn every_byte_round_trips() {
    let t = tokenizer();
    let text = "tab\there, naïve café 日本 😀\r\n\u{0}\u{7f}";
    assert_eq!(t.decode(&t.encode(text, false).unwrap(), false).unwrap(), text);
}

#[test]
fn special_tokens_are_never_split() {
    let t = tokenizer();
    let ids = t.encode("<|im_start|>hello<|im_end|><|im_end|>x<|endoftext|>", false).unwrap();
    assert_eq!(ids, [1, id(&t, "hello"), 2, 2, id(&t, "x"), 0]);
    assert_eq!(t.decode(&ids, true).unwrap(), "hellox");
    assert_eq!(t.decode(&ids, false).unwrap(), "<|im_start|>hello<|im_end|><|im_end|>x<|endoftext|>");
    // A partial marker is ordinary text.
    assert!(!t.encode("<|im_end", false).unwrap().contains(&2));
}

#[test]
fn user_defined_tokens_match_whole_but_are_not_special() {
    let mut spec = spec();
    spec.tokens.push("<think>".into());
    spec.token_types.push(4);
    let think = (spec.tokens.len() - 1) as u32;
    let t = Tokenizer::from_spec(spec).unwrap();
    let ids = t.encode("<think>hello", false).unwrap();
    assert_eq!(ids, [think, id(&t, "hello")]);
    assert_eq!(t.decode(&ids, true).unwrap(), "<think>hello");
}

#[test]
fn bos_and_eos_are_added_only_when_asked() {
    let t = tokenizer();
    assert_eq!(t.encode("x", true).unwrap(), t.encode("x", false).unwrap());

    let t = Tokenizer::from_spec(TokenizerSpec { add_bos: true, add_eos: true, ..spec() }).unwrap();
    let x = id(&t, "x");
    assert_eq!(t.encode("x", true).unwrap(), [1, x, 2]);
    assert_eq!(t.encode("x", false).unwrap(), [x]);
    assert_eq!((t.bos(), t.eos(), t.pad()), (Some(1), Some(2), Some(0)));
}

#[test]
fn end_of_generation_is_eos_and_end_of_turn_specials() {
    let t = Tokenizer::from_spec(TokenizerSpec { eos: Some(id(&tokenizer(), "ld")), ..spec() }).unwrap();
    let ld = id(&t, "ld");
    assert!(t.is_end_of_generation(ld));
    assert!(t.is_end_of_generation(0), "<|endoftext|>");
    assert!(t.is_end_of_generation(2), "<|im_end|>");
    assert!(!t.is_end_of_generation(1), "<|im_start|>");
    assert_eq!(t.end_of_generation(), [0, 2, ld]);
}

#[test]
fn end_of_turn_text_that_is_not_special_does_not_stop() {
    let mut spec = spec();
    spec.token_types[2] = 1;
    spec.eos = None;
    let t = Tokenizer::from_spec(spec).unwrap();
    assert!(!t.is_end_of_generation(2));
    assert_eq!(t.end_of_generation(), [0]);
}

#[test]
fn pre_tokenizers_follow_the_metadata() {
    // "hello  world": GPT-2's regex gives "hello", " ", " world"; Llama 3's gives "hello", " ",
    // " world" too, but splits digits in threes where GPT-2 keeps runs whole.
    for pre in ["default", "gpt2", "smollm", "llama-bpe", "llama3", "qwen2"] {
        let t = Tokenizer::from_spec(TokenizerSpec { pre: Some(pre.into()), ..spec() }).unwrap();
        let text = "hello  world\n\n12345";
        assert_eq!(t.decode(&t.encode(text, false).unwrap(), false).unwrap(), text, "{pre}");
    }
    let t = Tokenizer::from_spec(TokenizerSpec { pre: None, ..spec() }).unwrap();
    assert_eq!(t.encode("hello world", false).unwrap(), tokenizer().encode("hello world", false).unwrap());
}

#[test]
fn unknown_pre_tokenizer_is_named() {
    let err = Tokenizer::from_spec(TokenizerSpec { pre: Some("mystery-bpe".into()), ..spec() }).unwrap_err();
    assert!(matches!(&err, TokenizerError::UnknownPreTokenizer { pre } if pre == "mystery-bpe"), "{err}");
    let message = err.to_string();
    assert!(message.contains("mystery-bpe") && message.contains("smollm"), "{message}");
}

#[test]
fn bad_metadata_is_a_typed_error() {
    let mut short_types = spec();
    short_types.token_types.pop();
    let n = short_types.tokens.len();
    assert!(matches!(
        Tokenizer::from_spec(short_types),
        Err(TokenizerError::TokenTypesLength { tokens, token_types }) if tokens == n && token_types == n - 1
    ));

    let mut unknown = spec();
    unknown.merges.push("zz q".into());
    assert!(matches!(
        Tokenizer::from_spec(unknown),
        Err(TokenizerError::MergeUnknownToken { index: 9, token, .. }) if token == "zz"
    ));

    let mut result_missing = spec();
    result_missing.merges.push("x y".into());
    assert!(matches!(
        Tokenizer::from_spec(result_missing),
        Err(TokenizerError::MergeUnknownToken { token, .. }) if token == "xy"
    ));

    for bad in ["hello", "a  b", " a", "a b c"] {
        let mut malformed = spec();
        malformed.merges.insert(0, bad.into());
        assert!(
            matches!(Tokenizer::from_spec(malformed), Err(TokenizerError::MalformedMerge { index: 0, .. })),
            "{bad:?}"
        );
    }

    let mut duplicate = spec();
    duplicate.tokens.push("hello".into());
    duplicate.token_types.push(1);
    assert!(
        matches!(Tokenizer::from_spec(duplicate), Err(TokenizerError::DuplicateToken { token, .. }) if token == "hello")
    );

    let far = TokenizerSpec { eos: Some(1_000_000), ..spec() };
    assert!(matches!(
        Tokenizer::from_spec(far),
        Err(TokenizerError::SpecialIdOutOfRange { role: "EOS", id: 1_000_000, .. })
    ));

    let no_bos = TokenizerSpec { add_bos: true, bos: None, ..spec() };
    assert!(matches!(Tokenizer::from_spec(no_bos), Err(TokenizerError::MissingSpecialId { role: "BOS" })));
}

#[test]
fn decoding_an_unknown_id_is_an_error() {
    let t = tokenizer();
    let size = t.vocab_size();
    let err = t.decode(&[1, size as u32], false).unwrap_err();
    assert!(
        matches!(err, TokenizerError::UnknownTokenId { id, vocab_size } if id == size as u32 && vocab_size == size)
    );
}

/// Ids of the single bytes of `text`: no merges apply to non-ASCII text in the tiny vocabulary.
fn byte_ids(t: &Tokenizer, text: &str) -> Vec<u32> {
    let ids = t.encode(text, false).unwrap();
    assert_eq!(ids.len(), text.len(), "one token per byte");
    ids
}

#[test]
fn streaming_waits_for_a_whole_character() {
    let t = tokenizer();
    let emoji = byte_ids(&t, "😀");
    let mut stream = StreamDecoder::new(true);
    assert_eq!(stream.push(&t, id(&t, "hello")).unwrap().as_deref(), Some("hello"));
    for &byte in &emoji[..3] {
        assert_eq!(stream.push(&t, byte).unwrap(), None);
    }
    assert_eq!(stream.push(&t, emoji[3]).unwrap().as_deref(), Some("😀"));
    assert_eq!(stream.push(&t, 2).unwrap(), None, "a skipped special token adds no text");
    assert_eq!(stream.push(&t, id(&t, "Ġworld")).unwrap().as_deref(), Some(" world"));
    assert_eq!(stream.finish(&t).unwrap(), "");
}

#[test]
fn streamed_pieces_add_up_to_the_decoded_text() {
    let t = tokenizer();
    let text = "<|im_start|>hello world 日本語 🇫🇷 é\n<|im_end|>";
    let ids = t.encode(text, false).unwrap();
    for skip_special in [false, true] {
        let mut stream = StreamDecoder::new(skip_special);
        let mut streamed = String::new();
        for &id in &ids {
            if let Some(piece) = stream.push(&t, id).unwrap() {
                assert!(!piece.contains(char::REPLACEMENT_CHARACTER), "{piece:?}");
                streamed.push_str(&piece);
            }
        }
        streamed.push_str(&stream.finish(&t).unwrap());
        assert_eq!(streamed, t.decode(&ids, skip_special).unwrap());
    }
}

#[test]
fn streaming_lets_out_invalid_bytes_and_flushes_a_cut_character() {
    let t = tokenizer();
    let emoji = byte_ids(&t, "😀");
    let mut stream = StreamDecoder::new(false);
    // Lone continuation bytes can never become a character.
    for _ in 0..stream::MAX_PENDING {
        assert_eq!(stream.push(&t, emoji[1]).unwrap(), None);
    }
    let out = stream.push(&t, emoji[1]).unwrap().unwrap();
    assert_eq!(out, "\u{FFFD}".repeat(stream::MAX_PENDING + 1));
    assert_eq!(stream.push(&t, id(&t, "x")).unwrap().as_deref(), Some("x"));
    // A character cut off by the end of generation comes out as U+FFFD.
    assert_eq!(stream.push(&t, emoji[0]).unwrap(), None);
    assert_eq!(stream.finish(&t).unwrap(), "\u{FFFD}");
    // A bad id leaves the stream as it was.
    assert!(stream.push(&t, u32::MAX).is_err());
    assert_eq!(stream.push(&t, id(&t, "hello")).unwrap().as_deref(), Some("hello"));
}

fn user(content: &str) -> Message {
    Message::new("user", content)
}

#[test]
fn chatml_is_the_fallback() {
    let t = tokenizer();
    assert!(t.chat_template_source().is_none());
    let chat = t.chat_template().unwrap();
    let messages = [Message::new("system", "Be brief."), user("Hi")];
    assert_eq!(
        chat.render(&messages, true).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(chat.render(&messages[1..], false).unwrap(), "<|im_start|>user\nHi<|im_end|>\n");
}

#[test]
fn templates_render_like_jinja2_in_transformers() {
    // Block tags on their own lines leave no blank lines (trim_blocks, lstrip_blocks); Python
    // string methods; loop variables; indexing; bos_token.
    let source = "{{ bos_token }}
{% for message in messages %}
    {% if loop.first and messages[0]['role'] != 'system' %}
[default system]
    {% endif %}
[{{ message.role | upper }}] {{ message['content'].strip() }}{% if not loop.last %}|{% endif %}

{% endfor %}
{% if add_generation_prompt %}[ASSISTANT]{{ eos_token | default('') }}{% endif %}";
    let t = Tokenizer::from_spec(TokenizerSpec { chat_template: Some(source.into()), ..spec() }).unwrap();
    assert_eq!(t.chat_template_source(), Some(source));
    let out =
        t.chat_template().unwrap().render(&[user("  hi  "), Message::new("assistant", "yo")], true).unwrap();
    assert_eq!(out, "<|im_start|>\n[default system]\n[USER] hi|\n[ASSISTANT] yo\n[ASSISTANT]<|im_end|>");
}

#[test]
fn tojson_writes_what_python_json_dumps_writes() {
    let chat = ChatTemplate::new(
        "{{ messages[0] | tojson }} {{ [1, 'é<&>'] | tojson }}\n{{ {'a': [1, 2]} | tojson(indent=2) }}",
        None,
        None,
    )
    .unwrap();
    assert_eq!(
        chat.render(&[user("x")], false).unwrap(),
        "{\"role\": \"user\", \"content\": \"x\"} [1, \"é<&>\"]\n{\n  \"a\": [\n    1,\n    2\n  ]\n}"
    );
}

#[test]
fn raise_exception_is_reported_with_its_message() {
    let source = "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% endfor %}";
    let chat = ChatTemplate::new(source, None, None).unwrap();
    assert!(chat.render(&[user("ok")], true).is_ok());
    let err = chat.render(&[Message::new("system", "x")], true).unwrap_err();
    assert!(
        matches!(&err, TokenizerError::TemplateRaised { message } if message == "System role not supported"),
        "{err:?}"
    );
}

#[test]
fn template_errors_name_the_problem() {
    let err = ChatTemplate::new("{% for m in messages %}{{ m.content }}", None, None).unwrap_err();
    assert!(matches!(err, TokenizerError::TemplateSyntax(_)), "{err:?}");
    assert!(err.to_string().contains("does not parse"), "{err}");

    let chat = ChatTemplate::new("{{ messages[0].content.no_such_method() }}", None, None).unwrap();
    let err = chat.render(&[user("x")], false).unwrap_err();
    assert!(matches!(err, TokenizerError::TemplateRender(_)), "{err:?}");
    assert!(err.to_string().contains("no_such_method"), "{err}");

    // A broken template does not stop the tokenizer from loading.
    let t = Tokenizer::from_spec(TokenizerSpec { chat_template: Some("{% if %}".into()), ..spec() }).unwrap();
    assert!(matches!(t.chat_template(), Err(TokenizerError::TemplateSyntax(_))));
}

#[test]
fn tokenizer_json_with_config_matches_the_spec_build() {
    let from_spec = Tokenizer::from_spec(TokenizerSpec { add_bos: true, ..spec() }).unwrap();
    let json = from_spec.inner.to_string(false).unwrap();
    let config = r#"{
        "bos_token": {"__type": "AddedToken", "content": "<|im_start|>", "special": true},
        "eos_token": "<|im_end|>",
        "pad_token": null,
        "chat_template": [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": "{{ bos_token }}"}]
    }"#;
    let t = Tokenizer::from_json_bytes(json.as_bytes(), Some(config.as_bytes())).unwrap();
    let text = "<|im_start|>hello world 😀<|im_end|>";
    assert_eq!(t.encode(text, true).unwrap(), from_spec.encode(text, true).unwrap());
    assert_eq!(t.encode(text, false).unwrap(), from_spec.encode(text, false).unwrap());
    assert_eq!((t.bos(), t.eos(), t.pad()), (Some(1), Some(2), None));
    assert_eq!(t.end_of_generation(), [0, 2]);
    assert_eq!(t.chat_template().unwrap().render(&[], false).unwrap(), "<|im_start|>");

    let bad = Tokenizer::from_json_bytes(json.as_bytes(), Some(br#"{"eos_token": "</nope>"}"#)).unwrap_err();
    assert!(matches!(bad, TokenizerError::UnknownSpecialToken { role: "EOS", token } if token == "</nope>"));
    assert!(matches!(Tokenizer::from_json_bytes(b"{", None), Err(TokenizerError::Backend { .. })));
    assert!(matches!(
        Tokenizer::from_json_bytes(json.as_bytes(), Some(b"[")),
        Err(TokenizerError::Config(_))
    ));
}

#[test]
fn from_file_reads_the_config_beside_tokenizer_json() {
    let dir = std::env::temp_dir().join(format!("adaptkit-tokenizer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("tokenizer.json");
    std::fs::write(&json, tokenizer().inner.to_string(false).unwrap()).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), r#"{"eos_token": "<|endoftext|>"}"#).unwrap();
    let t = Tokenizer::from_file(&json).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(t.eos(), Some(0));
    assert!(matches!(Tokenizer::from_file(&json), Err(TokenizerError::Io { .. })));
}

mod gguf {
    use super::*;
    use crate::bytes::SharedBytes;
    use crate::format::gguf::{GgufFile, GgufWriter, MetadataValue};

    type Keys = Vec<(&'static str, MetadataValue)>;

    fn full_spec() -> TokenizerSpec {
        TokenizerSpec { add_bos: true, chat_template: Some(CHATML_TEMPLATE.into()), ..spec() }
    }

    /// A GGUF file holding [`full_spec`] under llama.cpp's keys, `edit`ed first.
    fn file(edit: impl FnOnce(&mut Keys)) -> GgufFile {
        let spec = full_spec();
        let mut keys: Keys = vec![
            ("tokenizer.ggml.model", "gpt2".into()),
            ("tokenizer.ggml.tokens", spec.tokens.into()),
            ("tokenizer.ggml.merges", spec.merges.into()),
            ("tokenizer.ggml.token_type", spec.token_types.into()),
            ("tokenizer.ggml.bos_token_id", spec.bos.unwrap().into()),
            ("tokenizer.ggml.eos_token_id", spec.eos.unwrap().into()),
            ("tokenizer.ggml.padding_token_id", spec.pad.unwrap().into()),
            ("tokenizer.ggml.add_bos_token", spec.add_bos.into()),
            ("tokenizer.ggml.add_eos_token", spec.add_eos.into()),
            ("tokenizer.ggml.pre", spec.pre.unwrap().into()),
            ("tokenizer.chat_template", spec.chat_template.unwrap().into()),
        ];
        edit(&mut keys);
        let mut writer = GgufWriter::new();
        for (key, value) in keys {
            writer.add_metadata(key, value).unwrap();
        }
        GgufFile::from_bytes(SharedBytes::from_vec(writer.to_bytes())).unwrap()
    }

    fn error_with(key: &'static str, value: Option<MetadataValue>) -> TokenizerError {
        let file = file(|keys| match value {
            Some(value) => keys.iter_mut().filter(|(k, _)| *k == key).for_each(|(_, v)| *v = value.clone()),
            None => keys.retain(|(k, _)| *k != key),
        });
        TokenizerSpec::from_gguf(&file).unwrap_err()
    }

    #[test]
    fn reads_every_key() {
        assert_eq!(TokenizerSpec::from_gguf(&file(|_| {})).unwrap(), full_spec());
        let t = Tokenizer::from_gguf(&file(|_| {})).unwrap();
        assert_eq!(t.encode("hello", true).unwrap(), [1, id(&t, "hello")]);
    }

    #[test]
    fn only_model_tokens_and_merges_are_required() {
        let required = ["tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.merges"];
        let read =
            TokenizerSpec::from_gguf(&file(|keys| keys.retain(|(k, _)| required.contains(k)))).unwrap();
        let spec = full_spec();
        assert_eq!(
            read,
            TokenizerSpec { tokens: spec.tokens, merges: spec.merges, ..TokenizerSpec::default() }
        );
        assert!(Tokenizer::from_spec(read).is_ok());
    }

    #[test]
    fn bad_metadata_is_a_typed_error() {
        assert!(matches!(
            error_with("tokenizer.ggml.model", Some("bert".into())),
            TokenizerError::UnsupportedModel { model } if model == "bert"
        ));
        // SentencePiece ("llama") as Llama 2 writes it: a space prefix this runtime does not build.
        assert!(matches!(
            error_with("tokenizer.ggml.model", Some("llama".into())),
            TokenizerError::SpacePrefix
        ));
        assert!(matches!(
            error_with("tokenizer.ggml.merges", None),
            TokenizerError::Gguf(GgufError::MissingKey { key }) if key == "tokenizer.ggml.merges"
        ));
        assert!(matches!(
            error_with("tokenizer.ggml.bos_token_id", Some("one".into())),
            TokenizerError::Gguf(GgufError::WrongType { key, .. }) if key == "tokenizer.ggml.bos_token_id"
        ));
        assert!(matches!(
            error_with("tokenizer.ggml.eos_token_id", Some((u64::from(u32::MAX) + 1).into())),
            TokenizerError::SpecialIdOutOfRange { role: "EOS", .. }
        ));
        assert!(matches!(
            error_with("tokenizer.ggml.token_type", Some(3i32.into())),
            TokenizerError::Gguf(GgufError::WrongType { key, .. }) if key == "tokenizer.ggml.token_type"
        ));
        assert!(matches!(
            error_with("tokenizer.ggml.token_type", Some(vec![i64::MAX].into())),
            TokenizerError::Gguf(GgufError::WrongElementType { index: 0, .. })
        ));
    }
}
