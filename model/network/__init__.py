"""The AFM network: Keras layers and the functional model."""
