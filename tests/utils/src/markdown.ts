/**
 * Markdown reading for the repository's doc checks: fenced code blocks (with the line they start
 * on and their info string) and inline links. Only what the READMEs and docs/ use: ``` and ~~~
 * fences (indented up to three spaces, closed by a fence of the same character at least as
 * long), `[text](target)` links and `<img src>`-free prose. Links inside code blocks and inline
 * code spans are not links. No kernel counterpart.
 */

/** A fenced code block. */
export interface CodeBlock {
  /** First word of the info string (`ts`, `sh`, ...), lower-cased; '' when there is none. */
  lang: string;
  /** The rest of the info string (e.g. `no-run`). */
  meta: string;
  /** The block's text, without the fences. */
  code: string;
  /** 1-based line of the opening fence. */
  line: number;
}

const FENCE = /^( {0,3})(`{3,}|~{3,})\s*([^`\s]*)\s*(.*)$/;

/** The fenced code blocks of `markdown`, in order. An unclosed fence runs to the end. */
export function codeBlocks(markdown: string): CodeBlock[] {
  const lines = markdown.split('\n');
  const out: CodeBlock[] = [];
  let open: { fence: string; lang: string; meta: string; line: number; body: string[] } | null = null;
  for (let i = 0; i < lines.length; i++) {
    const text = lines[i] ?? '';
    if (open === null) {
      const m = FENCE.exec(text);
      if (m !== null) {
        open = {
          fence: m[2] ?? '```',
          lang: (m[3] ?? '').toLowerCase(),
          meta: (m[4] ?? '').trim(),
          line: i + 1,
          body: [],
        };
      }
      continue;
    }
    const close = /^ {0,3}(`{3,}|~{3,})\s*$/.exec(text);
    if (close !== null && close[1]?.[0] === open.fence[0] && (close[1]?.length ?? 0) >= open.fence.length) {
      out.push({ lang: open.lang, meta: open.meta, code: open.body.join('\n'), line: open.line });
      open = null;
      continue;
    }
    open.body.push(text);
  }
  if (open !== null)
    out.push({ lang: open.lang, meta: open.meta, code: open.body.join('\n'), line: open.line });
  return out;
}

/** A link in prose. */
export interface MarkdownLink {
  text: string;
  target: string;
  /** 1-based line. */
  line: number;
}

/** The `[text](target)` links of `markdown` outside code blocks and inline code spans. */
export function markdownLinks(markdown: string): MarkdownLink[] {
  const lines = markdown.split('\n');
  const inBlock = new Set<number>();
  for (const b of codeBlocks(markdown)) {
    const n = b.code === '' ? 0 : b.code.split('\n').length;
    for (let l = b.line; l <= b.line + n + 1; l++) inBlock.add(l);
  }
  const out: MarkdownLink[] = [];
  lines.forEach((raw, i) => {
    if (inBlock.has(i + 1)) return;
    const text = raw.replace(/`[^`]*`/g, (s) => ' '.repeat(s.length));
    for (const m of text.matchAll(/\[([^\]]*)\]\(\s*(?:<([^>]*)>|([^)\s]+))(?:\s+"[^"]*")?\s*\)/g)) {
      out.push({ text: m[1] ?? '', target: m[2] ?? m[3] ?? '', line: i + 1 });
    }
  });
  return out;
}

/** True for a link target that is a path in the repository (not a URL, mail address or anchor). */
export function isRelativeTarget(target: string): boolean {
  return !/^[a-z][a-z0-9+.-]*:/i.test(target) && !target.startsWith('#') && !target.startsWith('//');
}
