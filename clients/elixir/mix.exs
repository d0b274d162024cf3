defmodule DspyPoolClient.MixProject do
  use Mix.Project

  # Pinned for Elixir 1.14 / OTP 25 (Debian 12): elixir-grpc 0.9.x is the last
  # line that supports Elixir 1.14 (0.10 needs ~> 1.15), and protobuf 0.14.x is
  # the first line that ships Google.Protobuf.Struct with from_map/to_map.
  def project do
    [
      app: :dspy_pool_client,
      version: "0.1.0",
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      deps: deps()
    ]
  end

  def application do
    [extra_applications: [:logger]]
  end

  defp deps do
    [
      {:grpc, "~> 0.9.0"},
      {:protobuf, "~> 0.14.0"}
    ]
  end
end
