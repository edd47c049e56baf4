// The library entries' key signatures (checked by `tsc` over this file: `pnpm typecheck`) and that
// package.json exports each entry with types. The full surfaces are in api/*.api.md.
import { readFileSync } from 'node:fs';
import { describe, expect, expectTypeOf, it } from 'vitest';
import * as nbd from '../src/nbd/index.js';
import * as workloads from '../src/workloads/index.js';

describe('iovalink library entries', () => {
  it('iovalink/nbd: the server, the export and the client', () => {
    expectTypeOf(nbd.startNbdServer).parameters.toEqualTypeOf<[nbd.NbdServerOptions]>();
    expectTypeOf(nbd.startNbdServer).returns.toEqualTypeOf<Promise<nbd.NbdServerHandle>>();
    expectTypeOf<nbd.NbdServerHandle['export']>().toEqualTypeOf<nbd.NbdExport>();
    expectTypeOf<nbd.NbdServerHandle['close']>().returns.toEqualTypeOf<Promise<nbd.NbdServerStats>>();
    expectTypeOf(nbd.NbdClient.open).returns.toEqualTypeOf<
      Promise<{ client: nbd.NbdClient; info: nbd.NbdExportInfo; contexts: nbd.NbdMetaContext[] }>
    >();
  });

  it('iovalink/workloads: the demo workloads and runBothPaths', () => {
    expectTypeOf(workloads.allWorkloads).returns.toEqualTypeOf<workloads.Workload[]>();
    expectTypeOf(workloads.runBothPaths).parameter(0).toEqualTypeOf<workloads.WorkloadContext>();
    expectTypeOf(workloads.odpWorkload).returns.toEqualTypeOf<workloads.Workload>();
    expectTypeOf(workloads.vfioWorkload).returns.toEqualTypeOf<workloads.Workload>();
    expect(workloads.allWorkloads().length).toBe(workloads.blockWorkloads().length + 2);
  });

  it('package.json exports both subpaths with types, source and default conditions', () => {
    const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
      exports: Record<string, Record<string, string> | string>;
    };
    expect(pkg.exports['./nbd']).toEqual({
      '@iovalink/source': './src/nbd/index.ts',
      types: './dist/nbd/index.d.ts',
      default: './dist/nbd/index.js',
    });
    expect(pkg.exports['./workloads']).toEqual({
      '@iovalink/source': './src/workloads/index.ts',
      types: './dist/workloads/index.d.ts',
      default: './dist/workloads/index.js',
    });
  });
});
