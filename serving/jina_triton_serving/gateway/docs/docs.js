// The docs page: reads /openapi.json (this gateway's own) and lets a reader send its examples.
"use strict";

function element(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
}

function fieldsTable(schema) {
  const table = element("table", {class: "fields"}, element("tr", {}, element("th", {}, "field"),
    element("th", {}, "values"), element("th", {}, "")));
  for (const [name, property] of Object.entries(schema.properties || {})) {
    // a nullable field is {anyOf: [its schema, {type: "null"}]}: show its own schema
    const field = property.anyOf ? {...property.anyOf[0], description: property.description} : property;
    const values = field.enum ? field.enum.join(" | ") :
      field.minimum !== undefined ? `${field.minimum}..${field.maximum}` : (field.type || "see schema");
    table.append(element("tr", {}, element("td", {}, element("code", {}, name)), element("td", {}, String(values)),
      element("td", {}, field.description || "")));
  }
  return table;
}

async function send(method, path, body, result) {
  const headers = {"content-type": "application/json"};
  const key = document.getElementById("key").value;
  if (key) headers.authorization = `Bearer ${key}`;
  result.textContent = "...";
  try {
    const reply = await fetch(path, {method, headers, body: method === "get" ? undefined : body});
    const text = await reply.text();
    result.dataset.status = String(reply.status);
    result.textContent = `${reply.status}\n${text.length > 4000 ? text.slice(0, 4000) + " ..." : text}`;
  } catch (error) {
    result.dataset.status = "error";
    result.textContent = String(error);
  }
}

function endpoint(spec, path, method, operation) {
  const item = element("li", {"data-path": path, "data-method": method},
    element("h2", {}, element("span", {class: "method"}, method.toUpperCase()), element("code", {}, path)),
    element("p", {}, operation.summary || ""));
  const content = operation.requestBody && operation.requestBody.content["application/json"];
  const result = element("pre", {class: "result"});
  const body = element("textarea", {class: "body", spellcheck: "false"});
  if (content) {
    const schema = spec.components.schemas[content.schema.$ref.split("/").pop()];
    item.append(fieldsTable(schema));
    const examples = content.examples || {};
    const picker = element("select", {class: "example"});
    for (const [name, example] of Object.entries(examples)) picker.append(element("option", {value: name},
      `${name}: ${example.summary}`));
    const show = () => { body.value = JSON.stringify(examples[picker.value].value, null, 2); };
    picker.addEventListener("change", show);
    item.append(picker, body);
    show();
  }
  const button = element("button", {class: "send", type: "button"}, "Send");
  button.addEventListener("click", () => send(method, path, content ? body.value : undefined, result));
  item.append(button, result);
  return item;
}

async function main() {
  const spec = await (await fetch("/openapi.json")).json();
  document.getElementById("title").textContent = `${spec.info.title} (${spec.info.version})`;
  document.getElementById("description").textContent = spec.info.description;
  const list = document.getElementById("endpoints");
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, operation] of Object.entries(methods)) list.append(endpoint(spec, path, method, operation));
  }
  document.body.dataset.loaded = "true";
}

main();
