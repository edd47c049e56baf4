// Runs every ```ts example of this package's README as a test (the shared runner in
// @iovalink/test-utils), so the README stays true.
import { fileURLToPath } from 'node:url';
import { describeReadmeExamples } from '@iovalink/test-utils';

describeReadmeExamples(fileURLToPath(new URL('..', import.meta.url)));
