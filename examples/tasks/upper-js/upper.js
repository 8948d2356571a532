// A wasmos task in JavaScript: a component of the `wasmos:task` world
// (built with componentize-js). Returns its input upper-cased, reporting
// progress as it goes through the text.
import { reportProgress, log } from "wasmos:task/context@0.1.0";

const CHUNK = 4096;

export function run(input) {
  // Only a thrown *string* becomes the `err` result; any other exception traps
  // (the task then fails with a trap message), so turn errors into strings.
  let text;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(input);
  } catch (e) {
    throw `input is not UTF-8 text: ${e.message}`;
  }
  if (text.length === 0) {
    throw "empty input: give the text to upper-case with --input FILE";
  }
  let out = "";
  for (let i = 0; i < text.length; i += CHUNK) {
    out += text.slice(i, i + CHUNK).toUpperCase();
    reportProgress(Math.min(1, (i + CHUNK) / text.length));
  }
  log(`upper-js: ${text.length} characters`);
  return new TextEncoder().encode(out);
}
