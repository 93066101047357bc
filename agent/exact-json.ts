// A strict JSON parser (RFC 8259) that keeps every number as the exact text
// of its literal.
//
// wal2json prints int8 and numeric values as bare JSON numbers; JSON.parse
// turns 9007199254740993 into 9007199254740992 and a 40-digit numeric into a
// float.  Here a number stays a JsonNumber holding the literal's text, so the
// caller gets back exactly what PostgreSQL printed.  Objects are Maps, so a
// key such as "__proto__" is an ordinary key; a repeated key keeps its last
// value, as JSON.parse does.

/** A JSON number, as the literal's exact text ("-0", "1e+300", "0.10"). */
export class JsonNumber {
  constructor(readonly text: string) {}
}

export type JsonValue = null | boolean | string | JsonNumber | JsonValue[] | JsonObject;
export type JsonObject = Map<string, JsonValue>;

export class JsonSyntaxError extends Error {
  override name = 'JsonSyntaxError';
  constructor(
    message: string,
    /** Offset in the input (UTF-16 code units) where parsing failed. */
    readonly position: number,
  ) {
    super(`${message} at position ${position}`);
  }
}

/** Nesting deeper than this is refused rather than risking the call stack. */
const MAX_DEPTH = 256;

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const SLASH = 0x2f;
const MINUS = 0x2d;
const PLUS = 0x2b;
const DOT = 0x2e;
const ZERO = 0x30;
const NINE = 0x39;
const LOWER_E = 0x65;
const UPPER_E = 0x45;
const COMMA = 0x2c;
const COLON = 0x3a;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;

const SIMPLE_ESCAPES: ReadonlyMap<number, string> = new Map([
  [QUOTE, '"'],
  [BACKSLASH, '\\'],
  [SLASH, '/'],
  [0x62, '\b'], // b
  [0x66, '\f'], // f
  [0x6e, '\n'], // n
  [0x72, '\r'], // r
  [0x74, '\t'], // t
]);

/** Parse one JSON document; numbers come back as JsonNumber. */
export function parseExactJson(text: string): JsonValue {
  const parser = new Parser(text);
  parser.skipWhitespace();
  const value = parser.value(0);
  parser.skipWhitespace();
  if (parser.pos < text.length) {
    throw new JsonSyntaxError('unexpected text after the JSON value', parser.pos);
  }
  return value;
}

class Parser {
  pos = 0;

  constructor(private readonly text: string) {}

  skipWhitespace(): void {
    const { text } = this;
    while (this.pos < text.length) {
      const c = text.charCodeAt(this.pos);
      if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) return;
      this.pos++;
    }
  }

  value(depth: number): JsonValue {
    if (this.pos >= this.text.length) {
      throw new JsonSyntaxError('unexpected end of input', this.pos);
    }
    const c = this.text.charCodeAt(this.pos);
    switch (c) {
      case OPEN_BRACE:
        return this.object(depth + 1);
      case OPEN_BRACKET:
        return this.array(depth + 1);
      case QUOTE:
        return this.string();
      case 0x74: // t
        return this.literal('true', true);
      case 0x66: // f
        return this.literal('false', false);
      case 0x6e: // n
        return this.literal('null', null);
      default:
        if (c === MINUS || (c >= ZERO && c <= NINE)) return this.number();
        throw new JsonSyntaxError(`unexpected character ${JSON.stringify(this.text[this.pos])}`, this.pos);
    }
  }

  private literal<T extends JsonValue>(word: string, value: T): T {
    if (!this.text.startsWith(word, this.pos)) {
      throw new JsonSyntaxError(`invalid literal (expected ${word})`, this.pos);
    }
    this.pos += word.length;
    return value;
  }

  private object(depth: number): JsonObject {
    this.checkDepth(depth);
    this.pos++; // {
    const result: JsonObject = new Map();
    this.skipWhitespace();
    if (this.peek() === CLOSE_BRACE) {
      this.pos++;
      return result;
    }
    for (;;) {
      this.skipWhitespace();
      if (this.peek() !== QUOTE) throw new JsonSyntaxError('expected a string key', this.pos);
      const key = this.string();
      this.skipWhitespace();
      if (this.peek() !== COLON) throw new JsonSyntaxError("expected ':'", this.pos);
      this.pos++;
      this.skipWhitespace();
      result.set(key, this.value(depth));
      this.skipWhitespace();
      const next = this.peek();
      this.pos++;
      if (next === CLOSE_BRACE) return result;
      if (next !== COMMA) throw new JsonSyntaxError("expected ',' or '}'", this.pos - 1);
    }
  }

  private array(depth: number): JsonValue[] {
    this.checkDepth(depth);
    this.pos++; // [
    const result: JsonValue[] = [];
    this.skipWhitespace();
    if (this.peek() === CLOSE_BRACKET) {
      this.pos++;
      return result;
    }
    for (;;) {
      this.skipWhitespace();
      result.push(this.value(depth));
      this.skipWhitespace();
      const next = this.peek();
      this.pos++;
      if (next === CLOSE_BRACKET) return result;
      if (next !== COMMA) throw new JsonSyntaxError("expected ',' or ']'", this.pos - 1);
    }
  }

  private string(): string {
    const { text } = this;
    this.pos++; // opening quote
    let result = '';
    let runStart = this.pos;
    for (;;) {
      if (this.pos >= text.length) throw new JsonSyntaxError('unterminated string', this.pos);
      const c = text.charCodeAt(this.pos);
      if (c === QUOTE) {
        result += text.slice(runStart, this.pos);
        this.pos++;
        return result;
      }
      if (c < 0x20) throw new JsonSyntaxError('unescaped control character in string', this.pos);
      if (c !== BACKSLASH) {
        this.pos++;
        continue;
      }
      result += text.slice(runStart, this.pos);
      const escape = text.charCodeAt(this.pos + 1);
      const simple = SIMPLE_ESCAPES.get(escape);
      if (simple !== undefined) {
        result += simple;
        this.pos += 2;
      } else if (escape === 0x75) {
        // \uXXXX: one UTF-16 code unit; a surrogate pair is two escapes, and
        // appending both code units reassembles the character.
        const hex = text.slice(this.pos + 2, this.pos + 6);
        if (!/^[0-9A-Fa-f]{4}$/.test(hex)) throw new JsonSyntaxError('invalid \\u escape', this.pos);
        result += String.fromCharCode(parseInt(hex, 16));
        this.pos += 6;
      } else {
        throw new JsonSyntaxError('invalid escape', this.pos);
      }
      runStart = this.pos;
    }
  }

  /** -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? kept as its text. */
  private number(): JsonNumber {
    const start = this.pos;
    if (this.peek() === MINUS) this.pos++;
    const first = this.peek();
    if (first === ZERO) {
      this.pos++;
    } else if (first >= ZERO + 1 && first <= NINE) {
      this.digits();
    } else {
      throw new JsonSyntaxError('expected a digit', this.pos);
    }
    if (this.peek() === DOT) {
      this.pos++;
      if (this.digits() === 0) throw new JsonSyntaxError('expected a digit after the decimal point', this.pos);
    }
    const e = this.peek();
    if (e === LOWER_E || e === UPPER_E) {
      this.pos++;
      const sign = this.peek();
      if (sign === PLUS || sign === MINUS) this.pos++;
      if (this.digits() === 0) throw new JsonSyntaxError('expected a digit in the exponent', this.pos);
    }
    return new JsonNumber(this.text.slice(start, this.pos));
  }

  private digits(): number {
    const start = this.pos;
    while (this.pos < this.text.length) {
      const c = this.text.charCodeAt(this.pos);
      if (c < ZERO || c > NINE) break;
      this.pos++;
    }
    return this.pos - start;
  }

  /** The code unit at pos, or NaN at the end (which matches no character). */
  private peek(): number {
    return this.text.charCodeAt(this.pos);
  }

  private checkDepth(depth: number): void {
    if (depth > MAX_DEPTH) throw new JsonSyntaxError(`nesting deeper than ${MAX_DEPTH}`, this.pos);
  }
}
