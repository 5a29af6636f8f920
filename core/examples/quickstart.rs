//! The runtime API in one program: open a model, complete a sentence, personalize the model on
//! notes, complete it again, save the adapter and make a signed patch of it.
//! `cargo run --release --example quickstart -- MODEL.gguf NOTES.txt` (the README shows this file).

use std::sync::Arc;

use adaptkit::runtime::patches::{self, CompressOptions, DenseType};
use adaptkit::runtime::{
    AdapterSource, CancelToken, Dataset, FileStore, GenerateOptions, GenerateRequest, GenerationEvent,
    LoadOptions, LoraInit, MethodOptions, Model, OpenOptions, Packing, Prompt, SamplingParams, TrainConfig,
    TrainEvent, TrainingData,
};

fn main() -> Result<(), adaptkit::Error> {
    let args: Vec<String> = std::env::args().collect();
    let (model_path, notes) = (args.get(1).expect("MODEL.gguf"), args.get(2).expect("NOTES.txt"));
    let model =
        Model::open_path(model_path.as_ref(), &OpenOptions { trainable: true, ..Default::default() })?;
    let complete = |text: &str| -> Result<String, adaptkit::Error> {
        let request = GenerateRequest {
            prompt: Prompt::Text(text.into()), // or Prompt::Chat(vec![Message::new("user", …)])
            options: GenerateOptions {
                max_tokens: 16,
                sampling: SamplingParams::greedy(),
                ..Default::default()
            },
        };
        let cancel = CancelToken::new(); // another thread may cancel it
        let report = model.generate(&request, &cancel, &mut |event| {
            if let GenerationEvent::Token { text, .. } = event {
                print!("{text}");
            }
        })?;
        println!("  [{:.0} tok/s]", report.decode_tok_s);
        Ok(report.text)
    };
    let question = "Saturday is bread day. I feed my sourdough starter, which I call";
    complete(question)?;

    // Personalize with the demo's recipe (README); the registry's defaults for the rest.
    let data = TrainingData { train: Dataset::read(notes.as_ref())?, eval: None, general: None };
    let config = TrainConfig {
        options: MethodOptions { init: Some(LoraInit::Pissa), ..Default::default() },
        packing: Packing::Documents,
        held_out_fraction: 0.0,
        steps: 40,
        batch: 2,
        lr: Some(3.5e-4),
        ..TrainConfig::default()
    };
    let run = FileStore::new("quickstart-run"); // checkpoints: `resume: true` continues a killed run
    let trained = model.train(&data, &config, &run, &CancelToken::new(), &mut |event| {
        if let TrainEvent::Step { step, tokens_per_s } = event {
            eprintln!("step {}/{}: loss {:.3} ({tokens_per_s:.0} tok/s)", step.step, step.steps, step.loss);
        }
    })?;
    model.attach(&trained.adapter, 1.0)?;
    complete(question)?; // " Old Henrik, on Friday night: …"

    // Save it as a PEFT directory, and as a ComPEFT patch signed with a new key.
    trained.adapter.save_dir("quickstart-lora".as_ref())?;
    let keys = patches::keygen()?;
    let patch = trained.adapter.to_patch(model.fingerprint()?, DenseType::F16)?;
    let coded =
        patches::compress(&model, &patch, &CompressOptions::default(), Some(&keys.signing_key), &mut |_| {})?;
    println!(
        "patch: {} bytes, {:.0}x smaller than the adapter in f16",
        coded.report.bytes, coded.report.ratio_vs_f16
    );

    // Elsewhere, only patches signed by that key are taken.
    let trusted = LoadOptions { trusted_keys: vec![keys.public_key], allow_port: false };
    let other = Model::open_path(
        model_path.as_ref(),
        &OpenOptions { cache: Some(Arc::new(FileStore::new("quickstart-cache"))), ..Default::default() },
    )?;
    let adapter = other
        .load_adapter(AdapterSource::Patch { bytes: coded.bytes, label: "notes.akp".into() }, &trusted)?;
    other.attach(&adapter, 1.0)?;
    Ok(())
}
