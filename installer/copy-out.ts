// COPY ... TO STDOUT as a readable stream, for `pgtimewarp asof <table>`.
//
// Not pg-copy-streams' `to` (the agent uses its `from` for COPY FROM): it
// reads the socket itself while the COPY runs and drops every NOTICE and
// WARNING the server sends meanwhile, and the warnings of a history lookup
// ("history of table ... is complete only up to ...") come exactly then.
// Here node-postgres parses the protocol as for any query, so they reach
// the client's 'notice' listeners, and hands over each CopyData message.

import { Readable } from 'node:stream';

import type pg from 'pg';

export class CopyOut extends Readable implements pg.Submittable {
  /** Rows copied, from the server's "COPY n" once it has completed. */
  rowCount = 0;
  private connection: pg.Connection | null = null;

  constructor(readonly text: string) {
    super();
  }

  submit(connection: pg.Connection): void {
    this.connection = connection;
    connection.query(this.text);
  }

  override _read(): void {
    this.connection?.stream.resume();
  }

  // called by node-postgres for each message of the COPY
  handleCopyData(msg: { chunk: Buffer }): void {
    if (this.destroyed) return; // the reader is gone (a closed pipe): let the rest go by
    // a copy: msg.chunk is a view of node-postgres' read buffer, which the next socket read overwrites
    // the reader is behind: stop reading the socket until it asks for more
    if (!this.push(Buffer.from(msg.chunk))) this.connection?.stream.pause();
  }

  handleCommandComplete(msg: { text: string }): void {
    const copied = /^COPY (\d+)$/.exec(msg.text);
    if (copied !== null) this.rowCount = Number(copied[1]);
  }

  handleReadyForQuery(): void {
    this.connection?.stream.resume();
    this.push(null);
  }

  handleError(err: Error): void {
    this.connection?.stream.resume();
    this.destroy(err);
  }
}
