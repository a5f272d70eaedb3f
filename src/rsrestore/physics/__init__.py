"""Physics of atmospheric degradation: scattering models, dark channel prior quantities, filters and synthesis."""
