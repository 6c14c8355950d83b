'use strict'

// One state per process whatever the import style, the package's entry points, and its types
// as TypeScript users see them.

const { execFile } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { promisify } = require('node:util')

const { freshStore } = require('./helpers.js')

const REPO = path.join(__dirname, '..')
const FIXTURES = path.join(__dirname, 'fixtures')
const TSC = path.join(REPO, 'node_modules', '.bin', 'tsc')

/** Runs a command; resolves with its exit code and output whatever the code. */
async function run(file, args, options = {}) {
  try {
    const { stdout, stderr } = await promisify(execFile)(file, args, { cwd: REPO, ...options })
    return { code: 0, stdout, stderr }
  } catch (err) {
    if (typeof err.code !== 'number') throw err
    return { code: err.code, stdout: err.stdout, stderr: err.stderr }
  }
}

/** Runs ESM source in a child `node` whose working directory is the package. */
const esm = (source) => run(process.execPath, ['--input-type=module', '-e', source])
/** Runs CommonJS source in a child `node` whose working directory is the package. */
const cjs = (source) => run(process.execPath, ['-e', source])

describe('one state per process whatever the import style', () => {
  let result
  let child

  beforeAll(async () => {
    const { dir, config } = freshStore()
    child = await run(process.execPath, [
      path.join(FIXTURES, 'esm-cjs-state.mjs'),
      JSON.stringify(config),
    ])
    result = child.code === 0 ? JSON.parse(child.stdout) : null
    fs.rmSync(dir, { recursive: true, force: true })
  })

  test('the child ran', () => {
    expect({ code: child.code, stderr: child.stderr }).toEqual({ code: 0, stderr: '' })
  })

  test('an error of the ESM backend is the last error of the CommonJS shared module', () => {
    expect(result.esmToCjs).toEqual({
      returned: null,
      warned: 1,
      code: 'INVALID_IMAGE',
      same: true,
    })
  })

  test('an error of the CommonJS backend is the last error of the ESM shared module', () => {
    expect(result.cjsToEsm).toEqual({
      returned: null,
      warned: 2,
      code: 'INVALID_IMAGE',
      same: true,
      newError: true,
      sameForCjs: true,
    })
  })

  test('a mode set through require holds for import', () => {
    expect(result.throwModeThroughEsm).toEqual({
      code: 'INVALID_IMAGE',
      instanceOfEsm: true,
      instanceOfCjs: true,
      lastErrorUnchanged: true,
    })
  })

  test('PixstoreError is one class, and ERROR_CODES one list, through import and require', () => {
    expect(result.oneClass).toBe(true)
    expect(result.firstIsInstance).toBe(true)
    expect(result.oneCodeList).toBe(true)
  })
})

describe('entry points', () => {
  test('the bare package name is not an entry point, for import or require', async () => {
    const imported = await esm(
      "import('pixstore').then(() => console.log('loaded'), (err) => console.log(err.code))",
    )
    const required = await cjs(
      "try { require('pixstore'); console.log('loaded') } catch (err) { console.log(err.code) }",
    )
    expect(imported.stdout.trim()).toBe('ERR_PACKAGE_PATH_NOT_EXPORTED')
    expect(required.stdout.trim()).toBe('ERR_PACKAGE_PATH_NOT_EXPORTED')
  })

  test('pixstore/types loads, empty, through import and require', async () => {
    const imported = await esm(
      "const types = await import('pixstore/types'); console.log(JSON.stringify(Object.keys(types)))",
    )
    const required = await cjs("console.log(JSON.stringify(require('pixstore/types')))")
    expect({ code: imported.code, out: imported.stdout.trim() }).toEqual({ code: 0, out: '[]' })
    expect({ code: required.code, out: required.stdout.trim() }).toEqual({ code: 0, out: '{}' })
  })
})

describe('types, as TypeScript users see them', () => {
  let project

  beforeAll(() => {
    // A consumer project with the package installed as a link, as `npm link` would.
    project = fs.mkdtempSync(path.join(os.tmpdir(), 'pixstore-ts-'))
    const source = path.join(FIXTURES, 'ts-consumer')
    for (const name of fs.readdirSync(source)) {
      fs.copyFileSync(path.join(source, name), path.join(project, name))
    }
    fs.copyFileSync(path.join(source, 'consumer.ts'), path.join(project, 'consumer.mts'))
    fs.mkdirSync(path.join(project, 'node_modules', '@types'), { recursive: true })
    fs.symlinkSync(REPO, path.join(project, 'node_modules', 'pixstore'), 'dir')
    fs.symlinkSync(
      path.join(REPO, 'node_modules', '@types', 'node'),
      path.join(project, 'node_modules', '@types', 'node'),
      'dir',
    )
  })

  afterAll(() => fs.rmSync(project, { recursive: true, force: true }))

  const tsc = (tsconfig, ...options) =>
    run(TSC, ['-p', tsconfig, '--pretty', 'false', ...options], {
      cwd: project,
      timeout: 120_000,
    })

  // The package's own declarations are checked too (no skipLibCheck) under node16. The other
  // modes skip that check, which spends most of its time in @types/node: what differs between
  // modes is how names resolve, and consumer.ts's @ts-expect-error probes fail the check should
  // any declaration stop resolving and turn into `any`.
  test.each([
    ['node16', []],
    ['nodenext', ['--skipLibCheck']],
    ['bundler', ['--skipLibCheck']],
  ])(
    'a CommonJS and an ESM consumer type-check under moduleResolution %s',
    async (resolution, options) => {
      const { code, stdout } = await tsc(`tsconfig.${resolution}.json`, ...options)
      expect({ code, stdout }).toEqual({ code: 0, stdout: '' })
    },
    120_000,
  )

  test('saveImage(42) does not type-check', async () => {
    fs.writeFileSync(
      path.join(project, 'tsconfig.negative.json'),
      JSON.stringify({ extends: './tsconfig.node16.json', files: ['bad-consumer.ts'] }),
    )
    const { code, stdout } = await tsc('tsconfig.negative.json', '--skipLibCheck')
    expect(code).not.toBe(0)
    expect(stdout).toMatch(
      /bad-consumer\.ts\(\d+,\d+\): error TS2345: Argument of type 'number' is not assignable to parameter of type '.*Uint8Array/,
    )
  }, 120_000)
})
