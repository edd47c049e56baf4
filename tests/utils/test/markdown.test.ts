// The markdown reader the README and docs checks rely on: which fences are code, which
// brackets are links.
import { describe, expect, it } from 'vitest';
import { codeBlocks, isRelativeTarget, markdownLinks } from '../src/markdown.js';

describe('codeBlocks', () => {
  it('finds ``` and ~~~ blocks with their language, info and opening line', () => {
    const md = ['# t', '', '```ts', 'const a = 1;', '```', 'text', '~~~sh no-run', 'ls', '~~~', ''].join(
      '\n',
    );
    expect(codeBlocks(md)).toEqual([
      { lang: 'ts', meta: '', code: 'const a = 1;', line: 3 },
      { lang: 'sh', meta: 'no-run', code: 'ls', line: 7 },
    ]);
  });

  it('a shorter or different fence inside a block does not close it', () => {
    const md = ['````md', '```ts', 'x', '```', '~~~', '````'].join('\n');
    const blocks = codeBlocks(md);
    expect(blocks).toHaveLength(1);
    expect(blocks[0]?.code).toBe(['```ts', 'x', '```', '~~~'].join('\n'));
  });

  it('an unclosed fence runs to the end of the file', () => {
    expect(codeBlocks('```\na\nb')).toEqual([{ lang: '', meta: '', code: 'a\nb', line: 1 }]);
  });
});

describe('markdownLinks', () => {
  it('finds links in prose with their line, not in code blocks or inline code', () => {
    const md = [
      'See [docs](docs/a.md) and [site](https://x.org "t").',
      '`[not](a-link.md)`',
      '```',
      '[nor](this.md)',
      '```',
      'last [one](<b c.md>)',
    ].join('\n');
    expect(markdownLinks(md).map((l) => [l.target, l.line])).toEqual([
      ['docs/a.md', 1],
      ['https://x.org', 1],
      ['b c.md', 6],
    ]);
  });

  it('tells repository paths from URLs and anchors', () => {
    expect(isRelativeTarget('docs/time.md')).toBe(true);
    expect(isRelativeTarget('../README.md#x')).toBe(true);
    expect(isRelativeTarget('https://example.org')).toBe(false);
    expect(isRelativeTarget('mailto:a@b')).toBe(false);
    expect(isRelativeTarget('#section')).toBe(false);
  });
});
