// agent/exact-json.ts: a strict JSON parser that keeps number literals as
// their exact text.  Where JSON.parse is exact it must agree with it; where
// JSON.parse rounds, the literal text must survive; and it must refuse what
// JSON.parse refuses.

import { describe, expect, it } from 'vitest';

import { JsonNumber, JsonSyntaxError, parseExactJson, type JsonValue } from '../../agent/exact-json.js';

/** The parse tree as JSON.parse would build it (numbers as doubles, objects as plain objects). */
function asPlain(value: JsonValue): unknown {
  if (value instanceof JsonNumber) return Number(value.text);
  if (Array.isArray(value)) return value.map(asPlain);
  if (value instanceof Map) {
    const out: Record<string, unknown> = {};
    for (const [key, item] of value) Object.defineProperty(out, key, { value: asPlain(item), enumerable: true, writable: true, configurable: true });
    return out;
  }
  return value;
}

/** Every number literal of the tree, in document order. */
function numberTexts(value: JsonValue): string[] {
  if (value instanceof JsonNumber) return [value.text];
  if (Array.isArray(value)) return value.flatMap(numberTexts);
  if (value instanceof Map) return [...value.values()].flatMap(numberTexts);
  return [];
}

describe('parseExactJson', () => {
  const agreeWithJsonParse = [
    '0',
    '-0',
    '1',
    '-1',
    '1.5',
    '1e3',
    '1E+3',
    '2.5e-3',
    '-0.0e-0',
    '123456789',
    '9007199254740991',
    'true',
    'false',
    'null',
    '""',
    '"plain"',
    String.raw`"quote \" backslash \\ slash \/ \b\f\n\r\t"`,
    String.raw`"\u0000\u0001\u001f \u00e9 \u20AC"`,
    String.raw`"\ud83c\udf89 surrogate pair, lone \ud800 and \udc00"`,
    '"raw unicode: é 日本語 🎉"',
    '[]',
    '{}',
    ' \t\r\n [ 1 , [ 2 , [ 3 , { "a" : [ ] } ] ] ] \n',
    '{"a":{"b":{"c":[1,{"d":null}]}},"e":[true,false,"x"]}',
    '{"dup":1,"dup":2}',
    '{"__proto__":{"x":1},"constructor":2}',
    '{"":0,"a b":"c"}',
  ];

  it.each(agreeWithJsonParse)('agrees with JSON.parse on %s', (text) => {
    expect(asPlain(parseExactJson(text))).toStrictEqual(JSON.parse(text));
  });

  it('keeps __proto__ as an ordinary key', () => {
    const parsed = parseExactJson('{"__proto__":{"polluted":true}}');
    expect(parsed).toBeInstanceOf(Map);
    expect((parsed as Map<string, JsonValue>).has('__proto__')).toBe(true);
    expect(({} as Record<string, unknown>)['polluted']).toBeUndefined();
  });

  it('keeps the exact text of numbers that JSON.parse rounds', () => {
    const literals = [
      '9007199254740993',
      '-9223372036854775808',
      '18446744073709551615',
      '1234567890123456789012345678901234.567890',
      '0.1000000000000000000000000000000000000001',
      '-0.000',
      '1.0',
      '100e-2',
      '1e+300',
      '1e400',
      '-1e-400',
      '5e-324',
      '4.9406564584124654e-324',
    ];
    const parsed = parseExactJson(`{"values":[${literals.join(', ')}],"nested":{"n":${literals[0]}}}`);
    expect(numberTexts(parsed)).toEqual([...literals, literals[0]]);
    // and JSON.parse really would have lost them
    expect(String(JSON.parse('9007199254740993'))).toBe('9007199254740992');
  });

  it('keeps numbers inside and next to strings apart', () => {
    const parsed = parseExactJson('["12345678901234567890", 12345678901234567890, "1e2"]');
    expect(parsed).toEqual(['12345678901234567890', new JsonNumber('12345678901234567890'), '1e2']);
  });

  const invalid = [
    '',
    ' ',
    '01',
    '-',
    '+1',
    '.5',
    '1.',
    '1e',
    '1e+',
    '0x10',
    'NaN',
    'Infinity',
    '-Infinity',
    'tru',
    'nul',
    'True',
    '"unterminated',
    '"tab\there"',
    '"newline\nhere"',
    String.raw`"\x41"`,
    String.raw`"\u12"`,
    String.raw`"\u12G4"`,
    "'single'",
    '[1,]',
    '[1 2]',
    '{"a":1,}',
    '{"a" 1}',
    '{a:1}',
    '{"a":1',
    '[',
    '1 2',
    '{} {}',
    '"\u2028 is fine" x',
  ];

  it.each(invalid)('refuses %j like JSON.parse does', (text) => {
    expect(() => JSON.parse(text)).toThrow();
    expect(() => parseExactJson(text)).toThrow(JsonSyntaxError);
  });

  it('refuses absurd nesting instead of overflowing the stack', () => {
    expect(() => parseExactJson('['.repeat(100_000))).toThrow(/nesting/);
  });

  it('parses a large string value in one piece', () => {
    const big = 'x'.repeat(5_000_000) + '\\n' + 'y'.repeat(10);
    const parsed = parseExactJson(`{"v":"${big}"}`) as Map<string, JsonValue>;
    expect(parsed.get('v')).toBe('x'.repeat(5_000_000) + '\n' + 'y'.repeat(10));
  });
});
