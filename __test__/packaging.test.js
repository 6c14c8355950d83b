// Installs the packed tarballs into a new project, as a user would on a machine without Rust,
// and uses them there through `import`, `require`, TypeScript and Jest.

const { execFileSync, spawnSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const { assetPath } = require('./helpers.js')

const repo = path.join(__dirname, '..')
const fixtures = path.join(__dirname, 'fixtures', 'consumer')
const tools = path.join(repo, 'node_modules')
const photo = assetPath('vilnius.jpg')

// No Rust toolchain: every PATH entry that holds cargo or rustc is dropped.
const PATH = process.env.PATH.split(path.delimiter)
  .filter((dir) => !['cargo', 'rustc'].some((tool) => fs.existsSync(path.join(dir, tool))))
  .join(path.delimiter)
const env = { ...process.env, PATH, npm_config_ignore_scripts: 'true' }

let project
let tarballs

function run(command, args, options = {}) {
  const result = spawnSync(command, args, { cwd: project, env, encoding: 'utf8', ...options })
  return { code: result.status, out: `${result.stdout}${result.stderr}` }
}

beforeAll(() => {
  const report = execFileSync('node', [path.join(repo, 'scripts', 'pack.mjs')], {
    encoding: 'utf8',
  })
  console.log(`Packed tarballs:\n${report}`)
  tarballs = report
    .trim()
    .split('\n')
    .map((line) => line.split(/\s+/).pop())

  project = fs.mkdtempSync(path.join(os.tmpdir(), 'pixstore-consumer-'))
  fs.writeFileSync(
    path.join(project, 'package.json'),
    JSON.stringify({ name: 'consumer', private: true, version: '1.0.0' }),
  )
  const install = run('npm', ['install', '--no-audit', '--no-fund', ...tarballs])
  expect(install).toMatchObject({ code: 0 })
}, 180_000)

afterAll(() => fs.rmSync(project, { recursive: true, force: true }))

test('the machine running the consumer has no Rust toolchain on PATH', () => {
  expect(run('sh', ['-c', 'command -v cargo || command -v rustc']).code).not.toBe(0)
})

test('the main tarball holds only what runs: no sources, tests or binaries', () => {
  const listing = execFileSync('tar', ['-tzf', tarballs[0]], { encoding: 'utf8' }).split('\n')
  expect(listing.some((f) => /\.(rs|node)$/.test(f) || /__test__|src\/|target\//.test(f))).toBe(
    false,
  )
  expect(listing).toEqual(expect.arrayContaining(['package/backend/index.mjs', 'package/index.js']))
  const installed = JSON.parse(
    fs.readFileSync(path.join(project, 'node_modules/pixstore/package.json'), 'utf8'),
  )
  expect(installed.optionalDependencies).toMatchObject({ 'pixstore-linux-x64-gnu': '4.0.0' })
})

test('the installed engines range admits this Node, whose Node-API is recent enough', () => {
  const { engines } = JSON.parse(
    fs.readFileSync(path.join(project, 'node_modules/pixstore/package.json'), 'utf8'),
  )
  const [major, minor] = process.versions.node.split('.').map(Number)
  expect(engines.node).toBe('>= 18.17')
  expect(major > 18 || (major === 18 && minor >= 17)).toBe(true)
  expect(Number(process.versions.napi)).toBeGreaterThanOrEqual(6)
})

test.each([
  ['an ES module', 'esm.mjs'],
  ['a CommonJS script', 'cjs.cjs'],
])('%s saves, reads and deletes a real photo', (_, script) => {
  fs.copyFileSync(path.join(fixtures, script), path.join(project, script))
  const store = fs.mkdtempSync(path.join(project, 'store-'))
  const { code, out } = run('node', [script, photo, store])
  expect({ code, result: JSON.parse(out.trim().split('\n').pop()) }).toMatchObject({
    code: 0,
    result: { same: true, deleted: true },
  })
})

test.each(['node16', 'bundler'])(
  'tsc --noEmit passes under moduleResolution %s',
  (mode) => {
    fs.copyFileSync(path.join(fixtures, 'consumer.ts'), path.join(project, 'consumer.ts'))
    const compilerOptions = {
      strict: true,
      noEmit: true,
      target: 'es2022',
      module: mode === 'node16' ? 'node16' : 'esnext',
      moduleResolution: mode,
      types: ['node'],
      typeRoots: [path.join(tools, '@types')],
    }
    const tsconfig = path.join(project, `tsconfig.${mode}.json`)
    fs.writeFileSync(tsconfig, JSON.stringify({ compilerOptions, files: ['consumer.ts'] }))
    const tsc = path.join(tools, 'typescript', 'bin', 'tsc')
    expect(run('node', [tsc, '-p', tsconfig])).toEqual({ code: 0, out: '' })
  },
  60_000,
)

test.each([
  ['--runInBand', ['--runInBand']],
  ['workers', ['--maxWorkers=3']],
])(
  'a Jest project of three files passes with %s',
  (_, flags) => {
    for (const name of ['avatars', 'posts', 'banners']) {
      fs.copyFileSync(path.join(fixtures, 'store.test.js'), path.join(project, `${name}.test.js`))
    }
    const jest = path.join(tools, 'jest', 'bin', 'jest.js')
    const result = run('node', [jest, '--rootDir', project, '--ci', ...flags], {
      env: { ...env, PIXSTORE_PHOTO: photo },
    })
    expect(result.out).toMatch(/Tests:\s+3 passed, 3 total/)
    expect(result.code).toBe(0)
  },
  60_000,
)

test('without the platform package, importing names the platform and how to build', () => {
  fs.rmSync(path.join(project, 'node_modules', 'pixstore-linux-x64-gnu'), { recursive: true })
  const { code, out } = run('node', ['-e', "require('pixstore/backend')"])
  expect(code).not.toBe(0)
  expect(out).toContain('pixstore has no native binary for linux-x64-gnu')
  expect(out).toContain('npm install && npm run build')
})
