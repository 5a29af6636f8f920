//! Chat templates: the Jinja a model ships (`tokenizer.chat_template`) rendered with minijinja
//! the way transformers' `apply_chat_template` renders it with Jinja2.

use std::collections::BTreeMap;
use std::fmt;

use minijinja::value::Kwargs;
use minijinja::{Environment, Error, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use super::TokenizerError;

/// transformers' old default for models without a template, and what SmolLM2 and Qwen use.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Gemma's turns (`<start_of_turn>user … <end_of_turn>`, the assistant called `model`, a system
/// message folded into the first user turn), for Gemma files without a template: the base models
/// ship none, and their instruction-tuned siblings use this one (written here from the format
/// Google documents; turns' content is trimmed and the system message is not, as in theirs).
pub const GEMMA_TEMPLATE: &str = "{{ bos_token }}{% if messages and messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] + '\n\n' %}{% set turns = messages[1:] %}{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}{% for message in turns %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' + (prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}";

const NAME: &str = "chat_template";

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, … as the template expects them.
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// A compiled chat template. Build it once per model ([`super::Tokenizer::chat_template`]) and
/// render every turn with it.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token`/`eos_token` are the texts the template sees under those
    /// names (undefined when `None`, as transformers leaves them).
    pub fn new(
        source: &str,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<Self, TokenizerError> {
        let mut env = Environment::new();
        // transformers compiles templates with both on; without them every `{% … %}` line would
        // leave its newline and indentation in the prompt.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // `.strip()`, `.startswith()`, `.items()`, … which templates written for Jinja2 call.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_string()).map_err(TokenizerError::TemplateSyntax)?;
        Ok(Self { env, bos_token: bos_token.map(String::from), eos_token: eos_token.map(String::from) })
    }

    /// The prompt text for `messages`; with `add_generation_prompt`, ending where the assistant's
    /// reply starts.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let mut context = BTreeMap::new();
        context.insert("messages", Value::from_serialize(messages));
        context.insert("add_generation_prompt", Value::from(add_generation_prompt));
        for (name, token) in [("bos_token", &self.bos_token), ("eos_token", &self.eos_token)] {
            if let Some(token) = token {
                context.insert(name, Value::from(token.as_str()));
            }
        }
        let template = self.env.get_template(NAME).map_err(TokenizerError::TemplateRender)?;
        template.render(context).map_err(|e| match raised_message(&e) {
            Some(message) => TokenizerError::TemplateRaised { message },
            None => TokenizerError::TemplateRender(e),
        })
    }
}

/// The error `raise_exception` makes, found again after minijinja has passed it up.
#[derive(Debug)]
struct Raised(String);

impl fmt::Display for Raised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

/// transformers' `raise_exception(message)`: templates call it to reject a conversation they
/// cannot format (roles that do not alternate, a system message where none is allowed).
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(Raised(message)))
}

fn raised_message(error: &Error) -> Option<String> {
    let mut source = std::error::Error::source(error);
    while let Some(error) = source {
        if let Some(Raised(message)) = error.downcast_ref::<Raised>() {
            return Some(message.clone());
        }
        source = error.source();
    }
    None
}

/// transformers' `tojson`: Python's `json.dumps(x, ensure_ascii=False, indent=indent)`. minijinja's
/// own escapes `<`, `>`, `&` and `'` for HTML, which would change the tool definitions a model
/// was trained to read.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let written = match indent {
        Some(width) => {
            let indent = vec![b' '; width];
            let formatter = serde_json::ser::PrettyFormatter::with_indent(&indent);
            value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, formatter))
        }
        None => value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, PythonSeparators)),
    };
    written.map_err(|e| {
        Error::new(ErrorKind::InvalidOperation, "tojson cannot serialize the value").with_source(e)
    })?;
    // serde_json writes only valid UTF-8, so nothing is lost here.
    Ok(Value::from(String::from_utf8_lossy(&out).into_owned()))
}

/// Python's default `json.dumps` separators without indentation: `", "` and `": "`.
struct PythonSeparators;

impl serde_json::ser::Formatter for PythonSeparators {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}
