// The `docs` table as a decoder describes it, for tests that feed the
// assembler and writer decoded messages directly (writer.test.ts,
// spill.test.ts).  The tests create the real table as
// `CREATE TABLE docs (id int PRIMARY KEY, title text, body text)`.

import type { RelationInfo } from '../../agent/decode.js';

export const docs: RelationInfo = {
  oid: 0,
  schema: 'public',
  table: 'docs',
  columns: [
    { name: 'id', typeOid: 23, isKey: true },
    { name: 'title', typeOid: 25, isKey: false },
    { name: 'body', typeOid: 25, isKey: false },
  ],
};
