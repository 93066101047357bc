// vitest glue for cluster.ts: one cluster per test file.

import { afterAll, beforeAll } from 'vitest';

import { ClusterError, startCluster, type Cluster, type ClusterOptions } from './cluster.js';

/**
 * Start a cluster in beforeAll and stop it in afterAll; call at the top of a
 * test file.  The returned function gives the running cluster inside tests.
 */
export function useCluster(opts: ClusterOptions = {}): () => Cluster {
  let cluster: Cluster | undefined;
  beforeAll(async () => {
    cluster = await startCluster(opts);
  });
  afterAll(async () => {
    await cluster?.stop();
    cluster = undefined;
  });
  return () => {
    if (cluster === undefined) {
      throw new ClusterError('useCluster(): no running cluster here; use it inside tests or hooks');
    }
    return cluster;
  };
}
