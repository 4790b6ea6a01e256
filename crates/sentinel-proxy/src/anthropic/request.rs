//! OpenAI chat completion request → Anthropic Messages request. The rules
//! are listed in the [module docs](super#request).

use serde_json::{Map, Value, json};

use super::{DEFAULT_MAX_TOKENS, MessagesRequest, Refused};

/// OpenAI chat completion request (already holding the concrete model name
/// in `"model"`) → Anthropic Messages request.
pub(crate) fn request(chat: &Value) -> Result<MessagesRequest, Refused> {
    let Some(chat) = chat.as_object() else {
        return Err(Refused {
            message: "the request body must be a JSON object".to_owned(),
            param: None,
        });
    };
    refuse_unsupported(chat)?;

    let mut body = Map::new();
    let Some(model) = field(chat, "model") else {
        return Err(refuse("`model` is required", "model"));
    };
    body.insert("model".to_owned(), model.clone());
    let (system, messages) = conversation(chat)?;
    if !system.is_empty() {
        body.insert("system".to_owned(), Value::String(system));
    }
    body.insert("messages".to_owned(), Value::Array(messages));
    body.insert("max_tokens".to_owned(), max_tokens(chat)?);
    if let Some(stop) = stop_sequences(chat)? {
        body.insert("stop_sequences".to_owned(), stop);
    }
    let temperature = number(chat, "temperature")?;
    if let Some(temperature) = temperature {
        let clamped = match temperature.as_f64() {
            Some(t) if t > 1.0 => json!(1.0),
            _ => temperature.clone(),
        };
        body.insert("temperature".to_owned(), clamped);
    }
    // Recent Claude models refuse `temperature` and `top_p` together:
    // with both, `temperature` is sent (Anthropic's advice is to set one).
    if let Some(top_p) = number(chat, "top_p")?
        && temperature.is_none()
    {
        body.insert("top_p".to_owned(), top_p.clone());
    }
    if let Some(user) = field(chat, "user") {
        let Some(user) = user.as_str() else {
            return Err(refuse("`user` must be a string", "user"));
        };
        if !user.is_empty() {
            body.insert("metadata".to_owned(), json!({ "user_id": user }));
        }
    }
    tools(chat, &mut body)?;
    let stream = boolean(chat, "stream")?.unwrap_or(false);
    if stream {
        body.insert("stream".to_owned(), Value::Bool(true));
    }
    let include_usage = include_usage(chat)?;
    Ok(MessagesRequest {
        body: Value::Object(body),
        stream,
        include_usage,
    })
}

fn refuse(message: impl Into<String>, param: &'static str) -> Refused {
    Refused {
        message: message.into(),
        param: Some(param),
    }
}

/// A field that is present and not `null`.
fn field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    object.get(name).filter(|value| !value.is_null())
}

fn boolean(chat: &Map<String, Value>, name: &'static str) -> Result<Option<bool>, Refused> {
    match field(chat, name) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(refuse(format!("`{name}` must be a boolean"), name)),
    }
}

fn number<'a>(
    chat: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a Value>, Refused> {
    match field(chat, name) {
        None => Ok(None),
        Some(value @ Value::Number(_)) => Ok(Some(value)),
        Some(_) => Err(refuse(format!("`{name}` must be a number"), name)),
    }
}

/// Refuses what would change the answer if it were dropped.
fn refuse_unsupported(chat: &Map<String, Value>) -> Result<(), Refused> {
    if let Some(n) = field(chat, "n")
        && n.as_u64() != Some(1)
    {
        return Err(refuse(
            "`n` other than 1 is not supported for Anthropic models",
            "n",
        ));
    }
    if boolean(chat, "logprobs")? == Some(true) {
        return Err(refuse(
            "`logprobs` is not supported for Anthropic models",
            "logprobs",
        ));
    }
    if field(chat, "top_logprobs").is_some() {
        return Err(refuse(
            "`top_logprobs` is not supported for Anthropic models",
            "top_logprobs",
        ));
    }
    if let Some(format) = field(chat, "response_format") {
        match format.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some(kind @ ("json_object" | "json_schema")) => {
                return Err(refuse(
                    format!("`response_format` `{kind}` is not supported for Anthropic models"),
                    "response_format",
                ));
            }
            _ => {
                return Err(refuse(
                    "`response_format` must be an object with a known `type`",
                    "response_format",
                ));
            }
        }
    }
    if let Some(modalities) = field(chat, "modalities") {
        let Some(modalities) = modalities.as_array() else {
            return Err(refuse(
                "`modalities` must be an array of strings",
                "modalities",
            ));
        };
        for modality in modalities {
            match modality.as_str() {
                Some("text") => {}
                Some("audio") => {
                    return Err(refuse(
                        "audio output is not supported for Anthropic models",
                        "modalities",
                    ));
                }
                _ => return Err(refuse("unknown value in `modalities`", "modalities")),
            }
        }
    }
    if field(chat, "audio").is_some() {
        return Err(refuse(
            "audio output is not supported for Anthropic models",
            "audio",
        ));
    }
    for name in ["functions", "function_call"] {
        if field(chat, name).is_some() {
            return Err(refuse(
                format!(
                    "`{name}` is deprecated and not supported for Anthropic models; use `tools`"
                ),
                name,
            ));
        }
    }
    Ok(())
}

/// The side of a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    User,
    Assistant,
}

/// The `system` text and the `messages` array.
fn conversation(chat: &Map<String, Value>) -> Result<(String, Vec<Value>), Refused> {
    let Some(messages) = field(chat, "messages").and_then(Value::as_array) else {
        return Err(refuse("`messages` must be an array", "messages"));
    };
    let mut system = Vec::new();
    let mut turns: Vec<(Role, Vec<Value>)> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let Some(message) = message.as_object() else {
            return Err(refuse(
                format!("messages[{i}] must be an object"),
                "messages",
            ));
        };
        let Some(role) = message.get("role").and_then(Value::as_str) else {
            return Err(refuse(
                format!("messages[{i}] needs a string `role`"),
                "messages",
            ));
        };
        let (role, blocks) = match role {
            "system" | "developer" => {
                let text = system_text(i, message)?;
                if !text.is_empty() {
                    system.push(text);
                }
                continue;
            }
            "user" => (Role::User, user_blocks(i, message)?),
            "assistant" => (Role::Assistant, assistant_blocks(i, message)?),
            "tool" => (Role::User, vec![tool_result(i, message)?]),
            "function" => {
                return Err(refuse(
                    format!(
                        "messages[{i}]: the deprecated `function` role is not supported for Anthropic models; use `tool`"
                    ),
                    "messages",
                ));
            }
            other => {
                return Err(refuse(
                    format!("messages[{i}]: unknown role `{other}`"),
                    "messages",
                ));
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, content)) if *last == role => content.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    if turns.is_empty() {
        return Err(refuse(
            "`messages` must hold at least one user or assistant message",
            "messages",
        ));
    }
    let messages = turns
        .into_iter()
        .map(|(role, blocks)| match role {
            Role::User => json!({ "role": "user", "content": tool_results_first(blocks) }),
            Role::Assistant => json!({ "role": "assistant", "content": blocks }),
        })
        .collect();
    Ok((system.join("\n\n"), messages))
}

/// Moves the `tool_result` blocks, in their order, before the others.
fn tool_results_first(blocks: Vec<Value>) -> Vec<Value> {
    let (mut results, rest): (Vec<Value>, Vec<Value>) = blocks
        .into_iter()
        .partition(|block| block.get("type").and_then(Value::as_str) == Some("tool_result"));
    results.extend(rest);
    results
}

fn text_block(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({ "type": "text", "text": text }))
}

/// The `text` of a part whose type is `text`.
fn part_text(i: usize, part: &Value) -> Result<&str, Refused> {
    part.get("text").and_then(Value::as_str).ok_or_else(|| {
        refuse(
            format!("messages[{i}]: a `text` part needs a string `text`"),
            "messages",
        )
    })
}

fn part_type(i: usize, part: &Value) -> Result<&str, Refused> {
    part.get("type").and_then(Value::as_str).ok_or_else(|| {
        refuse(
            format!("messages[{i}]: every content part needs a string `type`"),
            "messages",
        )
    })
}

fn unsupported_part(i: usize, kind: &str) -> Refused {
    refuse(
        format!("messages[{i}]: content part type `{kind}` is not supported for Anthropic models"),
        "messages",
    )
}

fn bad_content(i: usize) -> Refused {
    refuse(
        format!("messages[{i}].content must be a string or an array of content parts"),
        "messages",
    )
}

/// The text of a `system` or `developer` message: its text parts
/// concatenated.
fn system_text(i: usize, message: &Map<String, Value>) -> Result<String, Refused> {
    match field(message, "content") {
        None => Ok(String::new()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match part_type(i, part)? {
                    "text" => text.push_str(part_text(i, part)?),
                    other => return Err(unsupported_part(i, other)),
                }
            }
            Ok(text)
        }
        Some(_) => Err(bad_content(i)),
    }
}

fn user_blocks(i: usize, message: &Map<String, Value>) -> Result<Vec<Value>, Refused> {
    match field(message, "content") {
        None => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(text_block(text).into_iter().collect()),
        Some(Value::Array(parts)) => {
            let mut blocks = Vec::new();
            for part in parts {
                match part_type(i, part)? {
                    "text" => blocks.extend(text_block(part_text(i, part)?)),
                    "image_url" => blocks.push(image_block(i, part)?),
                    other => return Err(unsupported_part(i, other)),
                }
            }
            Ok(blocks)
        }
        Some(_) => Err(bad_content(i)),
    }
}

/// An `image_url` part → an image block with a `base64` or `url` source.
fn image_block(i: usize, part: &Value) -> Result<Value, Refused> {
    let url = match part.get("image_url") {
        Some(Value::Object(image)) => image.get("url").and_then(Value::as_str),
        Some(Value::String(url)) => Some(url.as_str()),
        _ => None,
    };
    let Some(url) = url else {
        return Err(refuse(
            format!("messages[{i}]: an `image_url` part needs a string `image_url.url`"),
            "messages",
        ));
    };
    if let Some(rest) = strip_prefix_ignore_case(url, "data:") {
        let (header, data) = rest.split_once(',').unwrap_or((rest, ""));
        let mut params = header.split(';');
        let media_type = params.next().unwrap_or_default();
        let base64 = params.any(|param| param.eq_ignore_ascii_case("base64"));
        if media_type.is_empty() || !base64 || data.is_empty() {
            return Err(refuse(
                format!(
                    "messages[{i}]: an image data URL must be `data:<media type>;base64,<data>`"
                ),
                "messages",
            ));
        }
        return Ok(json!({
            "type": "image",
            "source": { "type": "base64", "media_type": media_type, "data": data },
        }));
    }
    if strip_prefix_ignore_case(url, "https://").is_some()
        || strip_prefix_ignore_case(url, "http://").is_some()
    {
        return Ok(json!({ "type": "image", "source": { "type": "url", "url": url } }));
    }
    Err(refuse(
        format!("messages[{i}]: an image URL must be an http(s) URL or a base64 data URL"),
        "messages",
    ))
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

fn assistant_blocks(i: usize, message: &Map<String, Value>) -> Result<Vec<Value>, Refused> {
    let mut blocks = Vec::new();
    match field(message, "content") {
        None => {}
        Some(Value::String(text)) => blocks.extend(text_block(text)),
        Some(Value::Array(parts)) => {
            for part in parts {
                match part_type(i, part)? {
                    "text" => blocks.extend(text_block(part_text(i, part)?)),
                    "refusal" => {
                        let Some(refusal) = part.get("refusal").and_then(Value::as_str) else {
                            return Err(refuse(
                                format!("messages[{i}]: a `refusal` part needs a string `refusal`"),
                                "messages",
                            ));
                        };
                        blocks.extend(text_block(refusal));
                    }
                    other => return Err(unsupported_part(i, other)),
                }
            }
        }
        Some(_) => return Err(bad_content(i)),
    }
    if let Some(refusal) = field(message, "refusal") {
        let Some(refusal) = refusal.as_str() else {
            return Err(refuse(
                format!("messages[{i}].refusal must be a string"),
                "messages",
            ));
        };
        blocks.extend(text_block(refusal));
    }
    if field(message, "function_call").is_some() {
        return Err(refuse(
            format!(
                "messages[{i}]: the deprecated `function_call` is not supported for Anthropic models; use `tool_calls`"
            ),
            "messages",
        ));
    }
    if let Some(calls) = field(message, "tool_calls") {
        let Some(calls) = calls.as_array() else {
            return Err(refuse(
                format!("messages[{i}].tool_calls must be an array"),
                "messages",
            ));
        };
        for call in calls {
            blocks.push(tool_use(i, call)?);
        }
    }
    Ok(blocks)
}

/// An assistant's tool call → a `tool_use` block.
fn tool_use(i: usize, call: &Value) -> Result<Value, Refused> {
    let malformed = || {
        refuse(
            format!(
                "messages[{i}]: a tool call needs a string `id` and a `function` with a string `name` and `arguments`"
            ),
            "messages",
        )
    };
    let call = call.as_object().ok_or_else(malformed)?;
    match call.get("type").and_then(Value::as_str) {
        None | Some("function") => {}
        Some(other) => {
            return Err(refuse(
                format!(
                    "messages[{i}]: tool call type `{other}` is not supported for Anthropic models"
                ),
                "messages",
            ));
        }
    }
    let id = call
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(malformed)?;
    let function = call
        .get("function")
        .and_then(Value::as_object)
        .ok_or_else(malformed)?;
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(malformed)?;
    let arguments = match field(function, "arguments") {
        None => "",
        Some(Value::String(arguments)) => arguments.as_str(),
        Some(_) => return Err(malformed()),
    };
    let input = if arguments.trim().is_empty() {
        json!({})
    } else {
        match serde_json::from_str::<Value>(arguments) {
            Ok(input @ Value::Object(_)) => input,
            _ => {
                return Err(refuse(
                    format!(
                        "messages[{i}]: the arguments of tool call `{id}` are not a JSON object"
                    ),
                    "messages",
                ));
            }
        }
    };
    Ok(json!({ "type": "tool_use", "id": id, "name": name, "input": input }))
}

/// A `tool` message → a `tool_result` block.
fn tool_result(i: usize, message: &Map<String, Value>) -> Result<Value, Refused> {
    let Some(id) = message.get("tool_call_id").and_then(Value::as_str) else {
        return Err(refuse(
            format!("messages[{i}]: a tool message needs a string `tool_call_id`"),
            "messages",
        ));
    };
    let mut block = Map::new();
    block.insert("type".to_owned(), json!("tool_result"));
    block.insert("tool_use_id".to_owned(), json!(id));
    match field(message, "content") {
        None => {}
        Some(Value::String(text)) if text.is_empty() => {}
        Some(Value::String(text)) => {
            block.insert("content".to_owned(), json!(text));
        }
        Some(Value::Array(parts)) => {
            let mut blocks = Vec::new();
            for part in parts {
                match part_type(i, part)? {
                    "text" => blocks.extend(text_block(part_text(i, part)?)),
                    other => return Err(unsupported_part(i, other)),
                }
            }
            if !blocks.is_empty() {
                block.insert("content".to_owned(), Value::Array(blocks));
            }
        }
        Some(_) => return Err(bad_content(i)),
    }
    Ok(Value::Object(block))
}

fn max_tokens(chat: &Map<String, Value>) -> Result<Value, Refused> {
    let given = field(chat, "max_completion_tokens")
        .map(|value| (value, "max_completion_tokens"))
        .or_else(|| field(chat, "max_tokens").map(|value| (value, "max_tokens")));
    match given {
        None => Ok(json!(DEFAULT_MAX_TOKENS)),
        Some((value, name)) => value
            .as_u64()
            .map(Value::from)
            .ok_or_else(|| refuse(format!("`{name}` must be a non-negative integer"), name)),
    }
}

fn stop_sequences(chat: &Map<String, Value>) -> Result<Option<Value>, Refused> {
    match field(chat, "stop") {
        None => Ok(None),
        // Anthropic refuses a stop sequence without a visible character;
        // dropping it would change the answer.
        Some(Value::String(stop)) if stop.trim().is_empty() => Err(refuse(
            "a stop sequence must hold a non-whitespace character for this model",
            "stop",
        )),
        Some(Value::String(stop)) => Ok(Some(json!([stop]))),
        Some(Value::Array(stops)) if stops.iter().all(Value::is_string) => {
            if stops
                .iter()
                .any(|s| s.as_str().is_some_and(|s| s.trim().is_empty()))
            {
                return Err(refuse(
                    "a stop sequence must hold a non-whitespace character for this model",
                    "stop",
                ));
            }
            Ok((!stops.is_empty()).then(|| Value::Array(stops.clone())))
        }
        Some(_) => Err(refuse(
            "`stop` must be a string or an array of strings",
            "stop",
        )),
    }
}

/// `tools`, `tool_choice` and `parallel_tool_calls`.
fn tools(chat: &Map<String, Value>, body: &mut Map<String, Value>) -> Result<(), Refused> {
    let tools = match field(chat, "tools") {
        None => Vec::new(),
        Some(Value::Array(tools)) => tools
            .iter()
            .enumerate()
            .map(|(j, tool)| function_tool(j, tool))
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(refuse("`tools` must be an array", "tools")),
    };
    if tools.is_empty() {
        return Ok(());
    }
    body.insert("tools".to_owned(), Value::Array(tools));

    let parallel = boolean(chat, "parallel_tool_calls")?;
    let mut choice = match field(chat, "tool_choice") {
        None => None,
        Some(Value::String(choice)) => Some(match choice.as_str() {
            "auto" => "auto",
            "required" => "any",
            "none" => "none",
            other => {
                return Err(refuse(
                    format!("unknown `tool_choice` `{other}`"),
                    "tool_choice",
                ));
            }
        })
        .map(|kind| {
            let mut choice = Map::new();
            choice.insert("type".to_owned(), json!(kind));
            choice
        }),
        Some(Value::Object(choice)) => {
            let name = (choice.get("type").and_then(Value::as_str) == Some("function"))
                .then(|| choice.get("function")?.get("name")?.as_str())
                .flatten();
            let Some(name) = name else {
                return Err(refuse(
                    "`tool_choice` must be \"auto\", \"required\", \"none\" or a named function",
                    "tool_choice",
                ));
            };
            let mut choice = Map::new();
            choice.insert("type".to_owned(), json!("tool"));
            choice.insert("name".to_owned(), json!(name));
            Some(choice)
        }
        Some(_) => {
            return Err(refuse(
                "`tool_choice` must be a string or an object",
                "tool_choice",
            ));
        }
    };
    if parallel == Some(false) {
        let choice = choice.get_or_insert_with(|| {
            let mut choice = Map::new();
            choice.insert("type".to_owned(), json!("auto"));
            choice
        });
        if choice.get("type").and_then(Value::as_str) != Some("none") {
            choice.insert("disable_parallel_tool_use".to_owned(), Value::Bool(true));
        }
    }
    if let Some(choice) = choice {
        body.insert("tool_choice".to_owned(), Value::Object(choice));
    }
    Ok(())
}

/// An OpenAI function tool → an Anthropic tool.
fn function_tool(j: usize, tool: &Value) -> Result<Value, Refused> {
    let malformed = || {
        refuse(
            format!("tools[{j}] needs a `function` with a string `name`"),
            "tools",
        )
    };
    let tool = tool.as_object().ok_or_else(malformed)?;
    match tool.get("type").and_then(Value::as_str) {
        None | Some("function") => {}
        Some(other) => {
            return Err(refuse(
                format!("tools[{j}]: tool type `{other}` is not supported for Anthropic models"),
                "tools",
            ));
        }
    }
    let function = tool
        .get("function")
        .and_then(Value::as_object)
        .ok_or_else(malformed)?;
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(malformed)?;
    let mut out = Map::new();
    out.insert("name".to_owned(), json!(name));
    match field(function, "description") {
        None => {}
        Some(Value::String(description)) => {
            out.insert("description".to_owned(), json!(description));
        }
        Some(_) => {
            return Err(refuse(
                format!("tools[{j}].function.description must be a string"),
                "tools",
            ));
        }
    }
    let schema = match field(function, "parameters") {
        None => json!({ "type": "object" }),
        Some(parameters @ Value::Object(_)) => parameters.clone(),
        Some(_) => {
            return Err(refuse(
                format!("tools[{j}].function.parameters must be an object"),
                "tools",
            ));
        }
    };
    out.insert("input_schema".to_owned(), schema);
    Ok(Value::Object(out))
}

fn include_usage(chat: &Map<String, Value>) -> Result<bool, Refused> {
    match field(chat, "stream_options") {
        None => Ok(false),
        Some(Value::Object(options)) => match field(options, "include_usage") {
            None => Ok(false),
            Some(Value::Bool(include)) => Ok(*include),
            Some(_) => Err(refuse(
                "`stream_options.include_usage` must be a boolean",
                "stream_options",
            )),
        },
        Some(_) => Err(refuse(
            "`stream_options` must be an object",
            "stream_options",
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::{Value, json};

    use crate::anthropic::{DEFAULT_MAX_TOKENS, MessagesRequest, Refused, request};

    const MODEL: &str = "claude-sonnet-4-5";

    /// `{"model", "messages": [user "Hello"]}` with `extra`'s fields set.
    fn chat(extra: Value) -> Value {
        let mut chat = json!({
            "model": MODEL,
            "messages": [{ "role": "user", "content": "Hello" }],
        });
        merge(&mut chat, extra);
        chat
    }

    /// The Messages body for [`chat`]`({})` with `extra`'s fields set
    /// (a `null` removes one).
    fn body(extra: Value) -> Value {
        let mut body = json!({
            "model": MODEL,
            "messages": [{ "role": "user", "content": [{ "type": "text", "text": "Hello" }] }],
            "max_tokens": DEFAULT_MAX_TOKENS,
        });
        merge(&mut body, extra);
        body
    }

    fn merge(into: &mut Value, extra: Value) {
        let into = into.as_object_mut().unwrap();
        for (name, value) in extra.as_object().unwrap() {
            if value.is_null() {
                into.remove(name);
            } else {
                into.insert(name.clone(), value.clone());
            }
        }
    }

    fn text(text: &str) -> Value {
        json!({ "type": "text", "text": text })
    }

    fn translated(chat: &Value) -> Value {
        match request(chat) {
            Ok(MessagesRequest { body, .. }) => body,
            Err(refused) => panic!("refused: {refused:?}"),
        }
    }

    #[test]
    fn parameters_map_to_their_anthropic_counterparts() {
        let cases = [
            ("defaults", json!({}), json!({})),
            (
                "max_tokens",
                json!({ "max_tokens": 1024 }),
                json!({ "max_tokens": 1024 }),
            ),
            (
                "max_completion_tokens wins over max_tokens",
                json!({ "max_completion_tokens": 512, "max_tokens": 1024 }),
                json!({ "max_tokens": 512 }),
            ),
            (
                "stop string",
                json!({ "stop": "END" }),
                json!({ "stop_sequences": ["END"] }),
            ),
            (
                "stop array",
                json!({ "stop": ["\n\nHuman:", "END"] }),
                json!({ "stop_sequences": ["\n\nHuman:", "END"] }),
            ),
            ("empty stop array", json!({ "stop": [] }), json!({})),
            (
                "temperature",
                json!({ "temperature": 0.7 }),
                json!({ "temperature": 0.7 }),
            ),
            (
                "temperature 1",
                json!({ "temperature": 1 }),
                json!({ "temperature": 1 }),
            ),
            (
                "temperature above 1 is clamped",
                json!({ "temperature": 1.5 }),
                json!({ "temperature": 1.0 }),
            ),
            ("top_p", json!({ "top_p": 0.9 }), json!({ "top_p": 0.9 })),
            (
                "user",
                json!({ "user": "user-1234" }),
                json!({ "metadata": { "user_id": "user-1234" } }),
            ),
            (
                "stream",
                json!({ "stream": true }),
                json!({ "stream": true }),
            ),
            ("stream false", json!({ "stream": false }), json!({})),
            (
                "model as it is",
                json!({ "model": "claude-opus-4-1-20250805" }),
                json!({ "model": "claude-opus-4-1-20250805" }),
            ),
            (
                "nulls count as absent",
                json!({ "max_tokens": null, "stop": null, "temperature": null, "n": null,
                        "logprobs": null, "response_format": null, "tools": null, "user": null }),
                json!({}),
            ),
            (
                "dropped parameters",
                json!({
                    "frequency_penalty": 0.5,
                    "presence_penalty": -0.5,
                    "seed": 42,
                    "logit_bias": { "50256": -100 },
                    "service_tier": "auto",
                    "store": true,
                    "metadata": { "session": "abc" },
                    "stream_options": { "include_usage": true },
                    "reasoning_effort": "low",
                    "prediction": { "type": "content", "content": "x" },
                    "modalities": ["text"],
                    "parallel_tool_calls": true,
                    "response_format": { "type": "text" },
                    "logprobs": false,
                    "n": 1,
                    "web_search_options": {},
                    "some_future_field": [1, 2, 3],
                }),
                json!({}),
            ),
        ];
        for (name, extra, expected) in cases {
            assert_eq!(translated(&chat(extra)), body(expected), "{name}");
        }
    }

    #[test]
    fn stream_flags_are_reported() {
        let cases = [
            (json!({}), false, false),
            (json!({ "stream": true }), true, false),
            (
                json!({ "stream": true, "stream_options": { "include_usage": true } }),
                true,
                true,
            ),
            (
                json!({ "stream": true, "stream_options": { "include_usage": false } }),
                true,
                false,
            ),
        ];
        for (extra, stream, include_usage) in cases {
            let translated = request(&chat(extra.clone())).unwrap();
            assert_eq!(
                (translated.stream, translated.include_usage),
                (stream, include_usage),
                "{extra}"
            );
        }
    }

    #[test]
    fn conversations_become_system_and_alternating_turns() {
        let cases = [
            (
                "system and developer messages are joined",
                json!([
                    { "role": "system", "content": "You are a helpful assistant." },
                    { "role": "developer", "content": [
                        { "type": "text", "text": "Answer " }, { "type": "text", "text": "briefly." },
                    ] },
                    { "role": "system", "content": "" },
                    { "role": "user", "content": "Hello" },
                ]),
                json!({
                    "system": "You are a helpful assistant.\n\nAnswer briefly.",
                    "messages": [{ "role": "user", "content": [text("Hello")] }],
                }),
            ),
            (
                "a system message later in the conversation joins the others",
                json!([
                    { "role": "user", "content": "Hello" },
                    { "role": "system", "content": "Be terse." },
                ]),
                json!({
                    "system": "Be terse.",
                    "messages": [{ "role": "user", "content": [text("Hello")] }],
                }),
            ),
            (
                "multiple turns (the reference's example)",
                json!([
                    { "role": "user", "content": "Hello there." },
                    { "role": "assistant", "content": "Hi, I'm Claude. How can I help you?" },
                    { "role": "user", "content": "Can you explain LLMs in plain English?" },
                ]),
                json!({ "messages": [
                    { "role": "user", "content": [text("Hello there.")] },
                    { "role": "assistant", "content": [text("Hi, I'm Claude. How can I help you?")] },
                    { "role": "user", "content": [text("Can you explain LLMs in plain English?")] },
                ] }),
            ),
            (
                "consecutive same-role messages are merged",
                json!([
                    { "role": "user", "content": "One." },
                    { "role": "user", "content": [{ "type": "text", "text": "Two." }] },
                    { "role": "assistant", "content": "Three." },
                    { "role": "assistant", "content": [{ "type": "text", "text": "Four." }] },
                ]),
                json!({ "messages": [
                    { "role": "user", "content": [text("One."), text("Two.")] },
                    { "role": "assistant", "content": [text("Three."), text("Four.")] },
                ] }),
            ),
            (
                "an empty message is left out before merging",
                json!([
                    { "role": "user", "content": "One." },
                    { "role": "assistant", "content": "" },
                    { "role": "user", "content": "Two." },
                ]),
                json!({ "messages": [
                    { "role": "user", "content": [text("One."), text("Two.")] },
                ] }),
            ),
            (
                "an assistant first turn is sent as it is",
                json!([
                    { "role": "assistant", "content": "How can I help?" },
                    { "role": "user", "content": "What is the color of the sky?" },
                ]),
                json!({ "messages": [
                    { "role": "assistant", "content": [text("How can I help?")] },
                    { "role": "user", "content": [text("What is the color of the sky?")] },
                ] }),
            ),
            (
                "a final assistant turn (prefill) is kept",
                json!([
                    { "role": "user", "content": "What's the Greek name for Sun? (A) Sol (B) Helios (C) Sun" },
                    { "role": "assistant", "content": "The best answer is (" },
                ]),
                json!({ "messages": [
                    { "role": "user", "content": [text("What's the Greek name for Sun? (A) Sol (B) Helios (C) Sun")] },
                    { "role": "assistant", "content": [text("The best answer is (")] },
                ] }),
            ),
            (
                "assistant refusals become text",
                json!([
                    { "role": "user", "content": "Hello" },
                    { "role": "assistant", "content": [{ "type": "refusal", "refusal": "I can't." }] },
                    { "role": "assistant", "content": null, "refusal": "No." },
                ]),
                json!({ "messages": [
                    { "role": "user", "content": [text("Hello")] },
                    { "role": "assistant", "content": [text("I can't."), text("No.")] },
                ] }),
            ),
            (
                "a message's name is dropped",
                json!([{ "role": "user", "name": "alice", "content": "Hello" }]),
                json!({ "messages": [{ "role": "user", "content": [text("Hello")] }] }),
            ),
        ];
        for (name, messages, expected) in cases {
            let translated = translated(&chat(json!({ "messages": messages })));
            assert_eq!(translated, body(expected), "{name}");
        }
    }

    #[test]
    fn image_parts_become_image_blocks() {
        let cases = [
            (
                json!({ "type": "image_url", "image_url": { "url": "data:image/jpeg;base64,/9j/4AAQSkZJRg==" } }),
                json!({ "type": "image", "source": {
                    "type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQSkZJRg==",
                } }),
            ),
            (
                json!({ "type": "image_url", "image_url": { "url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high" } }),
                json!({ "type": "image", "source": {
                    "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo=",
                } }),
            ),
            (
                json!({ "type": "image_url", "image_url": {
                    "url": "https://upload.wikimedia.org/wikipedia/commons/a/a7/Camponotus_flavomarginatus_ant.jpg",
                } }),
                json!({ "type": "image", "source": {
                    "type": "url",
                    "url": "https://upload.wikimedia.org/wikipedia/commons/a/a7/Camponotus_flavomarginatus_ant.jpg",
                } }),
            ),
            (
                json!({ "type": "image_url", "image_url": { "url": "http://example.com/cat.gif" } }),
                json!({ "type": "image", "source": { "type": "url", "url": "http://example.com/cat.gif" } }),
            ),
        ];
        for (part, block) in cases {
            let messages = json!([{ "role": "user", "content": [part, { "type": "text", "text": "Describe this image." }] }]);
            assert_eq!(
                translated(&chat(json!({ "messages": messages }))),
                body(json!({ "messages": [
                    { "role": "user", "content": [block, text("Describe this image.")] },
                ] })),
            );
        }
    }

    /// The tool use example of Anthropic's documentation, as an OpenAI
    /// client sends it after running the tool.
    #[test]
    fn a_tool_round_trip_becomes_tool_use_and_tool_result() {
        let chat = json!({
            "model": MODEL,
            "max_tokens": 1024,
            "messages": [
                { "role": "user", "content": "What's the weather like in San Francisco?" },
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{
                        "id": "toolu_01A09q90qw90lq917835lq9",
                        "type": "function",
                        "function": {
                            "name": "get_weather",
                            "arguments": "{\"location\": \"San Francisco, CA\", \"unit\": \"celsius\"}",
                        },
                    }],
                },
                { "role": "tool", "tool_call_id": "toolu_01A09q90qw90lq917835lq9", "content": "15 degrees" },
            ],
            "tools": [{
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Get the current weather in a given location",
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "location": {
                                "type": "string",
                                "description": "The city and state, e.g. San Francisco, CA",
                            },
                            "unit": { "type": "string", "enum": ["celsius", "fahrenheit"] },
                        },
                        "required": ["location"],
                    },
                    "strict": true,
                },
            }],
        });
        assert_eq!(
            translated(&chat),
            json!({
                "model": MODEL,
                "max_tokens": 1024,
                "messages": [
                    { "role": "user", "content": [text("What's the weather like in San Francisco?")] },
                    { "role": "assistant", "content": [{
                        "type": "tool_use",
                        "id": "toolu_01A09q90qw90lq917835lq9",
                        "name": "get_weather",
                        "input": { "location": "San Francisco, CA", "unit": "celsius" },
                    }] },
                    { "role": "user", "content": [{
                        "type": "tool_result",
                        "tool_use_id": "toolu_01A09q90qw90lq917835lq9",
                        "content": "15 degrees",
                    }] },
                ],
                "tools": [{
                    "name": "get_weather",
                    "description": "Get the current weather in a given location",
                    "input_schema": {
                        "type": "object",
                        "properties": {
                            "location": {
                                "type": "string",
                                "description": "The city and state, e.g. San Francisco, CA",
                            },
                            "unit": { "type": "string", "enum": ["celsius", "fahrenheit"] },
                        },
                        "required": ["location"],
                    },
                }],
            }),
        );
    }

    #[test]
    fn tool_messages_merge_into_the_user_turn_results_first() {
        let call = |id: &str, arguments: &str| json!({ "id": id, "type": "function", "function": { "name": "f", "arguments": arguments } });
        let messages = json!([
            { "role": "user", "content": "Call f twice." },
            { "role": "assistant", "content": "Sure.", "tool_calls": [call("a", "{\"x\":1}"), call("b", "")] },
            { "role": "tool", "tool_call_id": "a", "content": [{ "type": "text", "text": "one" }] },
            { "role": "user", "content": "And then?" },
            { "role": "tool", "tool_call_id": "b", "content": "" },
        ]);
        assert_eq!(
            translated(&chat(json!({ "messages": messages }))),
            body(json!({ "messages": [
                { "role": "user", "content": [text("Call f twice.")] },
                { "role": "assistant", "content": [
                    text("Sure."),
                    { "type": "tool_use", "id": "a", "name": "f", "input": { "x": 1 } },
                    { "type": "tool_use", "id": "b", "name": "f", "input": {} },
                ] },
                { "role": "user", "content": [
                    { "type": "tool_result", "tool_use_id": "a", "content": [text("one")] },
                    { "type": "tool_result", "tool_use_id": "b" },
                    text("And then?"),
                ] },
            ] })),
        );
    }

    #[test]
    fn tools_and_tool_choice_map() {
        let tool = json!({ "type": "function", "function": { "name": "get_time" } });
        let anthropic_tool = json!({ "name": "get_time", "input_schema": { "type": "object" } });
        let cases = [
            ("no tool_choice", json!({}), None),
            (
                "auto",
                json!({ "tool_choice": "auto" }),
                Some(json!({ "type": "auto" })),
            ),
            (
                "required",
                json!({ "tool_choice": "required" }),
                Some(json!({ "type": "any" })),
            ),
            (
                "none",
                json!({ "tool_choice": "none" }),
                Some(json!({ "type": "none" })),
            ),
            (
                "named function",
                json!({ "tool_choice": { "type": "function", "function": { "name": "get_time" } } }),
                Some(json!({ "type": "tool", "name": "get_time" })),
            ),
            (
                "parallel_tool_calls false alone",
                json!({ "parallel_tool_calls": false }),
                Some(json!({ "type": "auto", "disable_parallel_tool_use": true })),
            ),
            (
                "parallel_tool_calls false with required",
                json!({ "tool_choice": "required", "parallel_tool_calls": false }),
                Some(json!({ "type": "any", "disable_parallel_tool_use": true })),
            ),
            (
                "parallel_tool_calls false with a named function",
                json!({ "tool_choice": { "type": "function", "function": { "name": "get_time" } },
                        "parallel_tool_calls": false }),
                Some(
                    json!({ "type": "tool", "name": "get_time", "disable_parallel_tool_use": true }),
                ),
            ),
            (
                "parallel_tool_calls false with none",
                json!({ "tool_choice": "none", "parallel_tool_calls": false }),
                Some(json!({ "type": "none" })),
            ),
            (
                "parallel_tool_calls true",
                json!({ "parallel_tool_calls": true }),
                None,
            ),
        ];
        for (name, extra, choice) in cases {
            let mut extra = extra;
            extra["tools"] = json!([tool]);
            let mut expected = json!({ "tools": [anthropic_tool] });
            if let Some(choice) = choice {
                expected["tool_choice"] = choice;
            }
            assert_eq!(translated(&chat(extra)), body(expected), "{name}");
        }
    }

    #[test]
    fn tool_choice_without_tools_is_dropped() {
        for extra in [
            json!({ "tool_choice": "required", "parallel_tool_calls": false }),
            json!({ "tools": [], "tool_choice": "auto" }),
        ] {
            assert_eq!(translated(&chat(extra.clone())), body(json!({})), "{extra}");
        }
    }

    #[test]
    fn what_would_change_the_answer_is_refused() {
        let user = |content: Value| json!({ "messages": [{ "role": "user", "content": content }] });
        let call = |arguments: &str| {
            json!({ "messages": [
                { "role": "user", "content": "Hi" },
                { "role": "assistant", "tool_calls": [
                    { "id": "c", "type": "function", "function": { "name": "f", "arguments": arguments } },
                ] },
            ] })
        };
        let cases = [
            ("n 2", json!({ "n": 2 }), "n"),
            ("n 0", json!({ "n": 0 }), "n"),
            ("logprobs", json!({ "logprobs": true }), "logprobs"),
            ("top_logprobs", json!({ "top_logprobs": 2 }), "top_logprobs"),
            (
                "json_object",
                json!({ "response_format": { "type": "json_object" } }),
                "response_format",
            ),
            (
                "json_schema",
                json!({ "response_format": { "type": "json_schema", "json_schema": { "name": "x", "schema": {} } } }),
                "response_format",
            ),
            (
                "audio modality",
                json!({ "modalities": ["text", "audio"] }),
                "modalities",
            ),
            (
                "audio parameter",
                json!({ "audio": { "voice": "alloy", "format": "wav" } }),
                "audio",
            ),
            (
                "functions",
                json!({ "functions": [{ "name": "f", "parameters": {} }] }),
                "functions",
            ),
            (
                "function_call",
                json!({ "function_call": "auto" }),
                "function_call",
            ),
            (
                "input_audio part",
                user(
                    json!([{ "type": "input_audio", "input_audio": { "data": "AAAA", "format": "wav" } }]),
                ),
                "messages",
            ),
            (
                "file part",
                user(json!([{ "type": "file", "file": { "file_id": "file-abc" } }])),
                "messages",
            ),
            (
                "image from another scheme",
                user(
                    json!([{ "type": "image_url", "image_url": { "url": "ftp://example.com/a.png" } }]),
                ),
                "messages",
            ),
            (
                "data URL not in base64",
                user(
                    json!([{ "type": "image_url", "image_url": { "url": "data:image/svg+xml,<svg/>" } }]),
                ),
                "messages",
            ),
            ("content of the wrong type", user(json!(42)), "messages"),
            ("arguments not JSON", call("{\"location\": "), "messages"),
            ("arguments not an object", call("[1, 2]"), "messages"),
            (
                "function role",
                json!({ "messages": [{ "role": "function", "name": "f", "content": "1" }] }),
                "messages",
            ),
            (
                "unknown role",
                json!({ "messages": [{ "role": "narrator", "content": "1" }] }),
                "messages",
            ),
            (
                "tool message without tool_call_id",
                json!({ "messages": [{ "role": "tool", "content": "1" }] }),
                "messages",
            ),
            (
                "only a system message",
                json!({ "messages": [{ "role": "system", "content": "Be nice." }] }),
                "messages",
            ),
            (
                "messages not an array",
                json!({ "messages": "Hello" }),
                "messages",
            ),
            ("no model", json!({ "model": null }), "model"),
            (
                "custom tool",
                json!({ "tools": [{ "type": "custom", "custom": { "name": "x" } }] }),
                "tools",
            ),
            (
                "unknown tool_choice",
                json!({ "tools": [{ "type": "function", "function": { "name": "f" } }], "tool_choice": "sometimes" }),
                "tool_choice",
            ),
            (
                "temperature of the wrong type",
                json!({ "temperature": "hot" }),
                "temperature",
            ),
            (
                "negative max_tokens",
                json!({ "max_tokens": -1 }),
                "max_tokens",
            ),
            ("stop of the wrong type", json!({ "stop": 5 }), "stop"),
            (
                "stream of the wrong type",
                json!({ "stream": "yes" }),
                "stream",
            ),
        ];
        for (name, extra, param) in cases {
            let refused = request(&chat(extra)).expect_err(name);
            assert_eq!(refused.param, Some(param), "{name}: {refused:?}");
            assert!(!refused.message.is_empty(), "{name}");
        }
    }

    #[test]
    fn a_body_that_is_not_an_object_is_refused() {
        for body in [json!([]), json!("chat"), Value::Null] {
            assert!(matches!(request(&body), Err(Refused { param: None, .. })));
        }
    }
}
