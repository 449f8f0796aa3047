/**
 * Text Postgres can store. It refuses U+0000 in any text or jsonb string or key (SQLSTATE 22P05 /
 * 22021), and an unpaired UTF-16 surrogate, which a JavaScript string may hold (JSON.parse makes one
 * from "\ud800"), in jsonb (22P02).
 */
const UNSTORABLE = /\0|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
const UNSTORABLE_ALL = new RegExp(UNSTORABLE, 'g');

/** Whether Postgres can store the string as text or inside jsonb. */
export function isStorableText(value: string): boolean {
  return !UNSTORABLE.test(value);
}

/** The string with each character Postgres cannot store replaced by U+FFFD. */
export function storableText(value: string): string {
  return value.replace(UNSTORABLE_ALL, '\uFFFD');
}
