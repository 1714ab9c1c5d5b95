// Placeholder: the generic-domain config (envoyproxy/ratelimit YAML) lands here.
export type GenericDomain = { domain: string };
