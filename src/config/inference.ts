// Placeholder: the inference policy file schema lands here.
export type InferencePolicy = { domain: string };
