import Agent

await AgentCommand.runMain()
