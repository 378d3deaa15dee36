"""Framework backends: ``base`` (the protocol and what every backend shares), ``rng`` (the
global RNG states, one schema), and one package per framework (``torch``, ``keras``),
each imported only when its public class is first used."""
