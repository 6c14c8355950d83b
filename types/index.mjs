// `pixstore/types` holds types only.
export {}
