import Policy
import Testing

@testable import Upstreams

/// The actions of each tool are spelled in three places that cannot share one list (Policy imports no
/// Upstreams): the tool's own list (metric labels), the policy compiler's (scopes), and the OpenAI
/// adapter's routes. They must name the same actions.
@Suite("Action lists agree")
struct ActionListTests {
    @Test func thePolicyKnowsExactlyTheToolsActions() {
        #expect(Set(PolicyCompiler.knownActions.keys) == Set(Tool.allCases.map(\.rawValue)))
        for tool in Tool.allCases {
            #expect(PolicyCompiler.knownActions[tool.rawValue] == tool.actions, "\(tool)")
        }
    }

    @Test func thePolicyKnowsWhichOpenAIActionsSpendNoTokens() {
        let free = Set(Tool.openai.actions.filter(OpenAIAdapter.spendsNoTokens))
        #expect(free == PolicyCompiler.tokenFreeOpenAIActions)
    }

    @Test func everyOpenAIRouteIsAnAction() {
        let routed = Set(OpenAIAdapter.actionByPath.values).union(["models", "stored_responses"])
        #expect(routed == Set(Tool.openai.actions))
    }
}
