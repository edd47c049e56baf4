/**
 * API reports: for every workspace package, one checked-in file per entry point listing each
 * exported name with its signature, so a change to a package's public surface shows in review.
 *
 *   pnpm api:report   rewrites `<package>/api/<entry>.api.md` from the sources
 *   pnpm api:check    fails (exit 1) when a checked-in report differs from the sources
 *
 * An entry is every `exports` key of the package's package.json except `./package.json`; its source
 * is the `@iovalink/source` condition. The report is built with the TypeScript compiler API (one
 * program over every entry): functions with their signatures, classes with their public
 * constructor and members, interfaces with their members, type aliases expanded one level,
 * constants with their types. We do not use @microsoft/api-extractor: it wants a built .d.ts
 * rollup per entry and its own bundled compiler; this script reads the same sources the tests do.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const check = process.argv.includes('--check');

interface Entry {
  pkgName: string;
  pkgDir: string;
  subpath: string;
  source: string;
  reportFile: string;
}

function workspacePackages(): string[] {
  const dirs: string[] = [];
  for (const group of ['packages', 'apps']) {
    const base = join(root, group);
    if (!existsSync(base)) continue;
    for (const d of readdirSync(base).sort()) {
      if (existsSync(join(base, d, 'package.json'))) dirs.push(join(base, d));
    }
  }
  return dirs;
}

function entries(): Entry[] {
  const out: Entry[] = [];
  for (const pkgDir of workspacePackages()) {
    const pkg = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8')) as {
      name: string;
      exports?: Record<string, string | Record<string, string>>;
    };
    for (const [subpath, target] of Object.entries(pkg.exports ?? {})) {
      if (subpath === './package.json' || typeof target === 'string') continue;
      const src = target['@iovalink/source'];
      if (src === undefined) throw new Error(`${pkg.name} ${subpath}: no "@iovalink/source" condition`);
      const name = subpath === '.' ? 'index' : subpath.slice(2).replaceAll('/', '-');
      out.push({
        pkgName: pkg.name,
        pkgDir,
        subpath,
        source: resolve(pkgDir, src),
        reportFile: join(pkgDir, 'api', `${name}.api.md`),
      });
    }
  }
  return out;
}

const FLAGS =
  ts.TypeFormatFlags.NoTruncation |
  ts.TypeFormatFlags.UseSingleQuotesForStringLiteralType |
  ts.TypeFormatFlags.WriteArrayAsGenericType;

function isPublicMember(decl: ts.Declaration | undefined): boolean {
  if (decl === undefined) return true;
  const flags = ts.getCombinedModifierFlags(decl);
  if (flags & (ts.ModifierFlags.Private | ts.ModifierFlags.Protected)) return false;
  const name = ts.getNameOfDeclaration(decl);
  return !(name !== undefined && ts.isPrivateIdentifier(name));
}

/**
 * A member's name as the report prints it. A member keyed by a unique symbol (`readonly [MARKER]`)
 * has the internal name `__@MARKER@<symbol id>`, whose id changes whenever any source file is added
 * to the program; it is printed as `[MARKER]` so the report does not depend on unrelated files.
 */
function memberName(prop: ts.Symbol): string {
  const m = /^__@(.+)@\d+$/.exec(prop.name);
  return m === null ? prop.name : `[${m[1]}]`;
}

function memberLines(
  checker: ts.TypeChecker,
  type: ts.Type,
  at: ts.Node,
  indent: string,
  prefix = '',
): string[] {
  const lines: string[] = [];
  for (const prop of checker.getPropertiesOfType(type)) {
    if (prop.name === 'prototype') continue;
    const name = memberName(prop);
    const decl = prop.valueDeclaration ?? prop.declarations?.[0];
    if (!isPublicMember(decl)) continue;
    const propType = checker.getTypeOfSymbolAtLocation(prop, at);
    const readonly = decl !== undefined && ts.getCombinedModifierFlags(decl) & ts.ModifierFlags.Readonly;
    const optional = prop.flags & ts.SymbolFlags.Optional ? '?' : '';
    if (prop.flags & ts.SymbolFlags.Method) {
      for (const sig of propType.getCallSignatures()) {
        lines.push(`${indent}${prefix}${name}${optional}${checker.signatureToString(sig, at, FLAGS)};`);
      }
    } else if (prop.flags & ts.SymbolFlags.GetAccessor && !(prop.flags & ts.SymbolFlags.SetAccessor)) {
      lines.push(`${indent}${prefix}get ${name}(): ${checker.typeToString(propType, at, FLAGS)};`);
    } else {
      lines.push(
        `${indent}${prefix}${readonly ? 'readonly ' : ''}${name}${optional}: ${checker.typeToString(propType, at, FLAGS)};`,
      );
    }
  }
  return lines;
}

function describe(checker: ts.TypeChecker, exportName: string, sym: ts.Symbol, at: ts.Node): string[] {
  const target = sym.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(sym) : sym;
  const decl = target.declarations?.[0];
  const out: string[] = [];
  const f = target.flags;
  if (f & ts.SymbolFlags.Class) {
    const typeOfClass = checker.getTypeOfSymbolAtLocation(target, at);
    const instance = checker.getDeclaredTypeOfSymbol(target);
    const isAbstract = decl !== undefined && ts.getCombinedModifierFlags(decl) & ts.ModifierFlags.Abstract;
    const base = instance.isClassOrInterface() ? checker.getBaseTypes(instance) : [];
    const ext =
      base.length > 0 ? ` extends ${base.map((b) => checker.typeToString(b, at, FLAGS)).join(', ')}` : '';
    out.push(`${isAbstract ? 'abstract ' : ''}class ${exportName}${ext} {`);
    for (const sig of typeOfClass.getConstructSignatures()) {
      const d = sig.getDeclaration();
      if (d !== undefined && !isPublicMember(d)) continue;
      const params = sig.parameters
        .map((p) => {
          const pd = p.valueDeclaration as ts.ParameterDeclaration | undefined;
          const opt =
            pd !== undefined && (pd.questionToken !== undefined || pd.initializer !== undefined) ? '?' : '';
          return `${p.name}${opt}: ${checker.typeToString(checker.getTypeOfSymbolAtLocation(p, at), at, FLAGS)}`;
        })
        .join(', ');
      out.push(`  constructor(${params});`);
    }
    out.push(...memberLines(checker, typeOfClass, at, '  ', 'static '));
    out.push(...memberLines(checker, instance, at, '  '));
    out.push('}');
  } else if (f & ts.SymbolFlags.Function) {
    const type = checker.getTypeOfSymbolAtLocation(target, at);
    for (const sig of type.getCallSignatures()) {
      out.push(`function ${exportName}${checker.signatureToString(sig, at, FLAGS)};`);
    }
  } else if (f & ts.SymbolFlags.Enum) {
    out.push(
      `enum ${exportName} { ${checker
        .getExportsOfModule(target)
        .map((m) => m.name)
        .join(', ')} }`,
    );
  } else if (f & ts.SymbolFlags.Variable) {
    const type = checker.getTypeOfSymbolAtLocation(target, at);
    const isConst = decl !== undefined && ts.getCombinedNodeFlags(decl) & ts.NodeFlags.Const;
    out.push(`${isConst ? 'const' : 'let'} ${exportName}: ${checker.typeToString(type, at, FLAGS)};`);
  }
  if (f & ts.SymbolFlags.Interface) {
    const type = checker.getDeclaredTypeOfSymbol(target);
    const base = type.isClassOrInterface() ? (checker.getBaseTypes(type) ?? []) : [];
    const ext =
      base.length > 0 ? ` extends ${base.map((b) => checker.typeToString(b, at, FLAGS)).join(', ')}` : '';
    out.push(`interface ${exportName}${ext} {`);
    for (const sig of type.getCallSignatures()) out.push(`  ${checker.signatureToString(sig, at, FLAGS)};`);
    out.push(...memberLines(checker, type, at, '  '));
    out.push('}');
  } else if (f & ts.SymbolFlags.TypeAlias) {
    const aliasDecl = target.declarations?.find(ts.isTypeAliasDeclaration);
    const params = aliasDecl?.typeParameters
      ? `<${aliasDecl.typeParameters.map((p) => p.getText()).join(', ')}>`
      : '';
    const text = aliasDecl ? aliasDecl.type.getText().replace(/\s+/g, ' ') : '?';
    out.push(`type ${exportName}${params} = ${text};`);
  }
  if (out.length === 0) out.push(`// ${exportName}: unrecognised declaration kind (flags ${f})`);
  return out;
}

function report(program: ts.Program, e: Entry): string {
  const checker = program.getTypeChecker();
  const sf = program.getSourceFile(e.source);
  if (sf === undefined) throw new Error(`${e.pkgName} ${e.subpath}: ${e.source} is not in the program`);
  const mod = checker.getSymbolAtLocation(sf);
  const exported = mod ? checker.getExportsOfModule(mod) : [];
  const names = exported.map((s) => s.name).sort((a, b) => a.localeCompare(b, 'en'));
  const byName = new Map(exported.map((s) => [s.name, s]));
  const importPath = e.subpath === '.' ? e.pkgName : `${e.pkgName}/${e.subpath.slice(2)}`;
  const lines = [
    `# API report: \`${importPath}\``,
    '',
    `Generated by \`pnpm api:report\` from \`${relative(e.pkgDir, e.source)}\`; \`pnpm api:check\` fails when this file`,
    'and the sources disagree. Review changes here as changes to what consumers can import.',
    '',
    `${names.length} exported names.`,
    '',
    '```ts',
  ];
  for (const n of names) {
    // a type the entry does not name is printed by its own name, not as an absolute import() path
    const described = describe(checker, n, byName.get(n) as ts.Symbol, sf).map((l) =>
      l.replace(/import\("[^"]*"\)\./g, ''),
    );
    lines.push(...described, '');
  }
  if (lines[lines.length - 1] === '') lines.pop();
  lines.push('```', '');
  return lines.join('\n');
}

const all = entries();
const configText = ts.readConfigFile(join(root, 'tsconfig.base.json'), ts.sys.readFile);
const parsed = ts.parseJsonConfigFileContent(configText.config, ts.sys, root);
const program = ts.createProgram(
  all.map((e) => e.source),
  { ...parsed.options, noEmit: true },
);
let drift = 0;
for (const e of all) {
  const text = report(program, e);
  const old = existsSync(e.reportFile) ? readFileSync(e.reportFile, 'utf8') : undefined;
  if (check) {
    if (old !== text) {
      drift++;
      console.error(
        `api:check: ${relative(root, e.reportFile)} ${old === undefined ? 'is missing' : 'differs from the sources'} (${e.pkgName} ${e.subpath})`,
      );
    }
  } else if (old !== text) {
    mkdirSync(dirname(e.reportFile), { recursive: true });
    writeFileSync(e.reportFile, text);
    console.log(`api:report: wrote ${relative(root, e.reportFile)}`);
  }
}
const stale = new Set(all.map((e) => e.reportFile));
for (const pkgDir of workspacePackages()) {
  const dir = join(pkgDir, 'api');
  if (!existsSync(dir)) continue;
  for (const f of readdirSync(dir)) {
    const p = join(dir, f);
    if (f.endsWith('.api.md') && !stale.has(p)) {
      drift++;
      console.error(`api:check: ${relative(root, p)} has no entry point any more: delete it`);
    }
  }
}
if (check) {
  if (drift > 0) {
    console.error(`api:check: ${drift} report(s) out of date: run \`pnpm api:report\` and review the diff`);
    process.exit(1);
  }
  console.log(`api:check: ${all.length} API reports match the sources`);
}
